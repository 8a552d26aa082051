# --- The load balancer: clients in, the servers' API port out ---

resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "NebulaGC ALB: HTTP/HTTPS from the allowed CIDRs"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-alb" })
}

resource "aws_vpc_security_group_ingress_rule" "alb_http" {
  for_each = toset(var.allowed_cidrs)

  security_group_id = aws_security_group.alb.id
  description       = "HTTP (redirects to HTTPS when a certificate is set)"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = each.value
  tags              = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  for_each = local.https ? toset(var.allowed_cidrs) : toset([])

  security_group_id = aws_security_group.alb.id
  description       = "HTTPS"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = each.value
  tags              = local.tags
}

resource "aws_vpc_security_group_egress_rule" "alb_to_servers" {
  security_group_id            = aws_security_group.alb.id
  description                  = "Requests and health checks to the servers' API port"
  ip_protocol                  = "tcp"
  from_port                    = var.api_port
  to_port                      = var.api_port
  referenced_security_group_id = aws_security_group.server.id
  tags                         = local.tags
}

# --- The servers: the API port from the ALB and from each other only ---

resource "aws_security_group" "server" {
  name        = "${var.name}-server"
  description = "NebulaGC servers: API from the ALB, API and replication between servers"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-server" })
}

resource "aws_vpc_security_group_ingress_rule" "server_api_from_alb" {
  security_group_id            = aws_security_group.server.id
  description                  = "API and health checks from the ALB (which answers 404 for /internal/*)"
  ip_protocol                  = "tcp"
  from_port                    = var.api_port
  to_port                      = var.api_port
  referenced_security_group_id = aws_security_group.alb.id
  tags                         = local.tags
}

# The replication endpoints (/internal/*) share the API port: this rule is the only way to them.
resource "aws_vpc_security_group_ingress_rule" "server_api_from_servers" {
  security_group_id            = aws_security_group.server.id
  description                  = "Replication (/internal/*), proxied writes and the cluster API between servers"
  ip_protocol                  = "tcp"
  from_port                    = var.api_port
  to_port                      = var.api_port
  referenced_security_group_id = aws_security_group.server.id
  tags                         = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "server_ssh" {
  for_each = toset(var.ssh_cidrs)

  security_group_id = aws_security_group.server.id
  description       = "SSH"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = each.value
  tags              = local.tags
}

# Packages, nodejs.org, the release, Secrets Manager, etcd.
resource "aws_vpc_security_group_egress_rule" "server_all" {
  security_group_id = aws_security_group.server.id
  description       = "All outbound"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
  tags              = local.tags
}

# --- The coordinator: attach this group to the etcd members ---

resource "aws_security_group" "coordinator" {
  name        = "${var.name}-coordinator"
  description = "etcd for NebulaGC: clients from the servers, peers among the members"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-coordinator" })
}

resource "aws_vpc_security_group_ingress_rule" "coordinator_client_from_servers" {
  security_group_id            = aws_security_group.coordinator.id
  description                  = "etcd client port from the NebulaGC servers"
  ip_protocol                  = "tcp"
  from_port                    = 2379
  to_port                      = 2379
  referenced_security_group_id = aws_security_group.server.id
  tags                         = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "coordinator_from_members" {
  security_group_id            = aws_security_group.coordinator.id
  description                  = "etcd client and peer ports between the members"
  ip_protocol                  = "tcp"
  from_port                    = 2379
  to_port                      = 2380
  referenced_security_group_id = aws_security_group.coordinator.id
  tags                         = local.tags
}

resource "aws_vpc_security_group_egress_rule" "coordinator_all" {
  security_group_id = aws_security_group.coordinator.id
  description       = "All outbound"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
  tags              = local.tags
}
