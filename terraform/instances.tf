# What every server shares. The nodes are fixed instances rather than an Auto Scaling group:
# each needs its own NEBULAGC_NODE_ID, kept across reboots and known to the others, and a
# replacement node is a deliberate, one-at-a-time step (see README.md, "Changing the servers").
resource "aws_launch_template" "server" {
  name_prefix            = "${var.name}-server-"
  image_id               = var.ami_id
  instance_type          = var.instance_type
  key_name               = var.key_name
  vpc_security_group_ids = [aws_security_group.server.id]

  iam_instance_profile {
    arn = aws_iam_instance_profile.server.arn
  }

  # IMDSv2 only, one hop: the user-data reads the private IP with a session token, and a
  # container on the host could not reach the role's credentials.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  tag_specifications {
    resource_type = "instance"
    tags          = local.tags
  }

  tags = local.tags
}

resource "aws_instance" "server" {
  for_each = var.nodes

  subnet_id = each.value

  launch_template {
    id      = aws_launch_template.server.id
    version = aws_launch_template.server.latest_version
  }

  # Secrets are not in here: the instance fetches them from Secrets Manager at boot.
  user_data = templatefile(local.user_data_template, merge(local.user_data_vars, { node_id = each.key }))

  root_block_device {
    volume_type           = "gp3"
    volume_size           = var.root_volume_size_gb
    encrypted             = true
    delete_on_termination = true
  }

  tags = merge(local.tags, { Name = "${var.name}-${each.key}", "nebulagc:node-id" = each.key })

  lifecycle {
    # user-data runs at first boot only, and a new AMI or instance type would otherwise stop or
    # replace every node in one apply: both reach a node when it is replaced on purpose.
    ignore_changes = [user_data, launch_template]
  }
}
