data "aws_region" "current" {}

locals {
  https      = var.certificate_arn != null
  node_count = length(var.nodes)

  # Every node is registered in both target groups. At any moment the master passes only the
  # write group's check and each caught-up replica only the read group's, so forwarding reads
  # with weight (nodes - 1) to the read group and 1 to the write group gives every node one share.
  read_weight  = local.node_count - 1
  write_weight = var.master_serves_reads || local.node_count == 1 ? 1 : 0

  # The listener that carries the API: HTTPS when there is a certificate (port 80 then only
  # redirects), plain HTTP otherwise. The routing rules hang off this one.
  api_listener_arn = local.https ? aws_lb_listener.https[0].arn : aws_lb_listener.http.arn

  secret_arns = [for arn in [var.replication_secret_arn, var.hmac_secret_arn, var.admin_token_secret_arn] : arn if arn != null]

  user_data_template = "${path.module}/user-data.sh.tftpl"
  user_data_vars = {
    region                 = data.aws_region.current.name
    api_port               = var.api_port
    etcd_endpoints         = join(",", var.etcd_endpoints)
    cluster_name           = var.cluster_name
    max_replica_lag_ms     = var.max_replica_lag_ms
    replica_writes         = var.replica_writes
    keepalive_timeout_ms   = (var.idle_timeout + 5) * 1000
    replication_secret_arn = var.replication_secret_arn
    hmac_secret_arn        = var.hmac_secret_arn
    admin_token_secret_arn = var.admin_token_secret_arn == null ? "" : var.admin_token_secret_arn
    release_url            = var.release_url
    release_sha256         = var.release_sha256 == null ? "" : var.release_sha256
    node_version           = var.node_version
    extra_env              = join("\n", [for k in sort(keys(var.extra_env)) : "${k}=${var.extra_env[k]}"])
  }

  tags = merge({ "nebulagc:cluster" = var.cluster_name }, var.tags)
}
