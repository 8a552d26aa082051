variable "name" {
  description = "Prefix of every resource name. Target group names add \"-write\"/\"-read\" and AWS caps them at 32 characters."
  type        = string
  default     = "nebulagc"

  validation {
    condition     = can(regex("^[a-zA-Z0-9]([a-zA-Z0-9-]{0,24}[a-zA-Z0-9])?$", var.name))
    error_message = "name: 1 to 26 letters, digits and hyphens, not starting or ending with a hyphen."
  }
}

variable "tags" {
  description = "Tags added to every resource that takes tags."
  type        = map(string)
  default     = {}
}

# --- Network and load balancer ---

variable "vpc_id" {
  description = "VPC of the load balancer, the servers and the etcd members."
  type        = string
}

variable "alb_subnet_ids" {
  description = "Subnets of the load balancer, in at least two Availability Zones (public subnets for an internet-facing ALB)."
  type        = list(string)

  validation {
    condition     = length(var.alb_subnet_ids) >= 2
    error_message = "An ALB needs subnets in at least two Availability Zones."
  }
}

variable "internal" {
  description = "true: an internal ALB, reachable only inside the VPC (and what is routed to it); false: internet-facing."
  type        = bool
  default     = false
}

variable "allowed_cidrs" {
  description = "IPv4 CIDRs allowed to reach the ALB on port 80 (and 443 with a certificate): where the daemons and operators are."
  type        = list(string)

  validation {
    condition     = length(var.allowed_cidrs) > 0 && alltrue([for c in var.allowed_cidrs : can(cidrhost(c, 0))])
    error_message = "allowed_cidrs: at least one CIDR, each like 203.0.113.0/24 (0.0.0.0/0 for everyone)."
  }
}

variable "certificate_arn" {
  description = "ACM certificate for an HTTPS listener on 443. When set, port 80 only redirects to HTTPS; null: plain HTTP on 80."
  type        = string
  default     = null
}

variable "ssl_policy" {
  description = "TLS policy of the HTTPS listener."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-2021-06"
}

variable "idle_timeout" {
  description = "ALB idle timeout in seconds. A daemon's blocking poll holds its request up to 300 s plus up to 1/16 of that as jitter (318.75 s) without a byte sent, so anything under that cuts polls."
  type        = number
  default     = 330

  validation {
    condition     = var.idle_timeout >= 330 && var.idle_timeout <= 4000
    error_message = "idle_timeout: 330 to 4000 seconds (blocking polls last up to 318.75 s; 4000 is the ALB maximum)."
  }
}

variable "deletion_protection" {
  description = "Turn on the ALB's deletion protection."
  type        = bool
  default     = false
}

variable "master_serves_reads" {
  description = "Send the master an equal share of reads (a weighted forward to the write group) besides every write. false: reads go to replicas only, unless the cluster has one node."
  type        = bool
  default     = true
}

variable "max_replica_lag_ms" {
  description = "A replica leaves the read target group when its lag reaches this many ms (the ?max_lag_ms= of its health check, and NEBULAGC_MAX_REPLICA_LAG_MS on the servers)."
  type        = number
  default     = 5000

  validation {
    condition     = var.max_replica_lag_ms >= 0 && floor(var.max_replica_lag_ms) == var.max_replica_lag_ms
    error_message = "max_replica_lag_ms: a whole number of ms, 0 or more."
  }
}

# --- Servers ---

variable "nodes" {
  description = "The servers: node id => subnet id. Each key becomes an instance and its NEBULAGC_NODE_ID; spread them over Availability Zones. Removing a key destroys only that node."
  type        = map(string)

  validation {
    condition     = length(var.nodes) >= 1 && alltrue([for id in keys(var.nodes) : can(regex("^[a-z0-9][a-z0-9-]{0,62}$", id))])
    error_message = "nodes: at least one entry; node ids are 1 to 63 lower-case letters, digits and hyphens."
  }
}

variable "ami_id" {
  description = "AMI of the servers: Debian 12 (bookworm), amd64 or arm64. The user-data installs with apt-get and needs Debian's nebula and awscli packages."
  type        = string
}

variable "instance_type" {
  description = "EC2 instance type of the servers. The first boot compiles the SQLite addon, which wants 2 GiB of memory."
  type        = string
  default     = "t3.small"
}

variable "root_volume_size_gb" {
  description = "Size of each server's root volume (gp3, encrypted), which holds the database in /var/lib/nebulagc."
  type        = number
  default     = 20

  validation {
    condition     = var.root_volume_size_gb >= 8
    error_message = "root_volume_size_gb: at least 8."
  }
}

variable "key_name" {
  description = "EC2 key pair for SSH; null: none."
  type        = string
  default     = null
}

variable "ssh_cidrs" {
  description = "IPv4 CIDRs allowed to SSH to the servers; empty: no SSH rule."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.ssh_cidrs : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "ssh_cidrs: CIDRs like 198.51.100.7/32, never 0.0.0.0/0."
  }
}

variable "api_port" {
  description = "Port of the server's HTTP API (NEBULAGC_LISTEN), which is also where the other servers reach its replication endpoints."
  type        = number
  default     = 8080

  validation {
    condition     = var.api_port >= 1024 && var.api_port <= 65535 && !contains([2379, 2380], var.api_port)
    error_message = "api_port: 1024 to 65535 (the service does not run as root), and not an etcd port."
  }
}

variable "release_url" {
  description = "HTTPS URL of the release tarball: the repository tree after `npm run build` (package.json, package-lock.json, scripts/, dist/, ops/) under one top-level directory, with or without node_modules."
  type        = string

  validation {
    condition     = can(regex("^https://[^\\s'\"]+$", var.release_url))
    error_message = "release_url must be an https:// URL without spaces or quotes."
  }
}

variable "release_sha256" {
  description = "SHA-256 of the release tarball, checked before it is unpacked; null skips the check."
  type        = string
  default     = null

  validation {
    condition     = var.release_sha256 == null || can(regex("^[0-9a-f]{64}$", var.release_sha256))
    error_message = "release_sha256: 64 lower-case hex digits."
  }
}

variable "node_version" {
  description = "Node.js 20 release installed from nodejs.org (checked against its SHASUMS256.txt)."
  type        = string
  default     = "20.20.2"

  validation {
    condition     = can(regex("^20\\.[0-9]+\\.[0-9]+$", var.node_version))
    error_message = "node_version: a Node.js 20 version such as 20.20.2."
  }
}

variable "etcd_endpoints" {
  description = "etcd client URLs (NEBULAGC_ETCD_ENDPOINTS), e.g. [\"http://10.0.1.10:2379\", ...]. Attach coordinator_security_group_id to the etcd members."
  type        = list(string)

  validation {
    condition     = length(var.etcd_endpoints) >= 1 && alltrue([for e in var.etcd_endpoints : can(regex("^https?://[A-Za-z0-9.:\\[\\]_-]+/?$", e))])
    error_message = "etcd_endpoints: at least one http:// or https:// URL of a host and port, e.g. http://10.0.1.10:2379."
  }
}

variable "cluster_name" {
  description = "NEBULAGC_CLUSTER_NAME: the key prefix of this NebulaGC cluster in etcd; one per cluster sharing an etcd."
  type        = string
  default     = "nebulagc"

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]+$", var.cluster_name))
    error_message = "cluster_name: letters, digits, '_', '.' and '-'."
  }
}

variable "replica_writes" {
  description = "NEBULAGC_REPLICA_WRITES. proxy (default): a replica forwards a write to the master, so a write that reaches a replica (the ALB fails open while no node passes /health/master) still succeeds and the client never sees the master's private address. redirect answers 307 to that private address."
  type        = string
  default     = "proxy"

  validation {
    condition     = contains(["proxy", "redirect", "reject"], var.replica_writes)
    error_message = "replica_writes: proxy, redirect or reject."
  }
}

variable "replication_secret_arn" {
  description = "ARN of the Secrets Manager secret whose SecretString is NEBULAGC_REPLICATION_SECRET (32+ characters, e.g. `openssl rand -hex 32`)."
  type        = string

  validation {
    condition     = startswith(var.replication_secret_arn, "arn:")
    error_message = "replication_secret_arn must be a Secrets Manager ARN."
  }
}

variable "hmac_secret_arn" {
  description = "ARN of the Secrets Manager secret whose SecretString is NEBULAGC_HMAC_SECRET (32+ characters, the same on every node)."
  type        = string

  validation {
    condition     = startswith(var.hmac_secret_arn, "arn:")
    error_message = "hmac_secret_arn must be a Secrets Manager ARN."
  }
}

variable "admin_token_secret_arn" {
  description = "ARN of a Secrets Manager secret holding NEBULAGC_ADMIN_TOKEN, which seeds the operator token of a new database; null: the first master prints a generated token once in its journal."
  type        = string
  default     = null

  validation {
    condition     = var.admin_token_secret_arn == null || startswith(coalesce(var.admin_token_secret_arn, "-"), "arn:")
    error_message = "admin_token_secret_arn must be a Secrets Manager ARN or null."
  }
}

variable "secrets_kms_key_arn" {
  description = "Customer managed KMS key that encrypts the secrets, if any: the servers get kms:Decrypt on it through Secrets Manager only. null: the AWS managed key."
  type        = string
  default     = null
}

variable "extra_env" {
  description = "More server settings written to /etc/nebulagc/server.env, e.g. { NEBULAGC_SYNC_REPLICAS = \"1\" }. The settings this module writes itself cannot be overridden here."
  type        = map(string)
  default     = {}

  validation {
    condition = alltrue([
      for k, v in var.extra_env : can(regex("^NEBULAGC_[A-Z0-9_]+$", k)) && !can(regex("[\\r\\n]", v)) && !contains([
        "NEBULAGC_LISTEN", "NEBULAGC_DB_PATH", "NEBULAGC_NODE_ID", "NEBULAGC_ADVERTISE_URL", "NEBULAGC_HA_MODE",
        "NEBULAGC_COORDINATOR", "NEBULAGC_ETCD_ENDPOINTS", "NEBULAGC_CLUSTER_NAME", "NEBULAGC_REPLICATION_SECRET",
        "NEBULAGC_HMAC_SECRET", "NEBULAGC_ADMIN_TOKEN", "NEBULAGC_TRUST_PROXY", "NEBULAGC_REPLICA_WRITES",
        "NEBULAGC_MAX_REPLICA_LAG_MS",
      ], k)
    ])
    error_message = "extra_env: NEBULAGC_* names not set by the module, values on one line."
  }
}
