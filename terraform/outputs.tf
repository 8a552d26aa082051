output "alb_dns_name" {
  description = "DNS name of the ALB: point a CNAME or alias at it, and the daemons' server URL."
  value       = aws_lb.this.dns_name
}

output "alb_zone_id" {
  description = "Hosted zone id of the ALB, for a Route 53 alias record."
  value       = aws_lb.this.zone_id
}

output "alb_arn" {
  description = "ARN of the ALB."
  value       = aws_lb.this.arn
}

output "api_url" {
  description = "Base URL of the API through the ALB (its DNS name; use your own name when the certificate is for it)."
  value       = "${local.https ? "https" : "http"}://${aws_lb.this.dns_name}"
}

output "write_target_group_arn" {
  description = "ARN of the write target group (health check /health/master)."
  value       = aws_lb_target_group.write.arn
}

output "read_target_group_arn" {
  description = "ARN of the read target group (health check /health/replica)."
  value       = aws_lb_target_group.read.arn
}

output "instance_ids" {
  description = "Node id => EC2 instance id."
  value       = { for id, i in aws_instance.server : id => i.id }
}

output "instance_private_ips" {
  description = "Node id => private IP; each node's NEBULAGC_ADVERTISE_URL is http://<ip>:<api_port>. Per-node operations (/cluster/*, /metrics) go here, not through the ALB."
  value       = { for id, i in aws_instance.server : id => i.private_ip }
}

output "alb_security_group_id" {
  description = "Security group of the ALB."
  value       = aws_security_group.alb.id
}

output "server_security_group_id" {
  description = "Security group of the servers. A host in it (a Prometheus, a bastion running the runbook scripts) reaches every server's API port."
  value       = aws_security_group.server.id
}

output "coordinator_security_group_id" {
  description = "Security group to attach to the etcd members: client port from the servers, client and peer ports between members."
  value       = aws_security_group.coordinator.id
}

output "server_role_name" {
  description = "IAM role of the servers, to attach more policies (e.g. AmazonSSMManagedInstanceCore)."
  value       = aws_iam_role.server.name
}
