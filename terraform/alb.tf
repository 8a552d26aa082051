resource "aws_lb" "this" {
  name               = var.name
  load_balancer_type = "application"
  internal           = var.internal
  subnets            = var.alb_subnet_ids
  security_groups    = [aws_security_group.alb.id]

  # Daemons hold blocking polls open without a byte for up to 318.75 s (wait 300 s + wait/16).
  idle_timeout               = var.idle_timeout
  drop_invalid_header_fields = true
  # The server (NEBULAGC_TRUST_PROXY=true) takes the client IP from the last X-Forwarded-For
  # entry: the one the ALB appends.
  xff_header_processing_mode = "append"
  enable_deletion_protection = var.deletion_protection

  tags = local.tags
}

# Writes: only a node that takes writes answers /health/master with 200 (a serving master; a
# fenced master, a replica and a node between roles answer 503).
resource "aws_lb_target_group" "write" {
  name                          = "${var.name}-write"
  vpc_id                        = var.vpc_id
  target_type                   = "instance"
  protocol                      = "HTTP"
  port                          = var.api_port
  load_balancing_algorithm_type = "round_robin"
  # Short, so a replaced or deregistered node stops holding polls quickly; daemons poll again.
  deregistration_delay = 10

  health_check {
    enabled             = true
    protocol            = "HTTP"
    port                = "traffic-port"
    path                = "/health/master"
    matcher             = "200"
    interval            = 5
    timeout             = 3
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }

  # A client pinned to a node would keep writing to a demoted master.
  stickiness {
    type    = "lb_cookie"
    enabled = false
  }

  tags = local.tags
}

# Reads: a replica answers /health/replica with 200 only while its lag is under max_lag_ms (the
# query string wins over the server's NEBULAGC_MAX_REPLICA_LAG_MS); the master answers 503 here
# and gets its share of reads through the write group (see local.write_weight).
resource "aws_lb_target_group" "read" {
  name                          = "${var.name}-read"
  vpc_id                        = var.vpc_id
  target_type                   = "instance"
  protocol                      = "HTTP"
  port                          = var.api_port
  load_balancing_algorithm_type = "round_robin"
  deregistration_delay          = 10

  health_check {
    enabled             = true
    protocol            = "HTTP"
    port                = "traffic-port"
    path                = "/health/replica?max_lag_ms=${var.max_replica_lag_ms}"
    matcher             = "200"
    interval            = 5
    timeout             = 3
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }

  # A client pinned to a replica would keep reading from it after it falls behind.
  stickiness {
    type    = "lb_cookie"
    enabled = false
  }

  tags = local.tags
}

resource "aws_lb_listener" "http" {
  load_balancer_arn = aws_lb.this.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type = local.https ? "redirect" : "forward"

    dynamic "redirect" {
      for_each = local.https ? [1] : []
      content {
        protocol    = "HTTPS"
        port        = "443"
        status_code = "HTTP_301"
      }
    }

    dynamic "forward" {
      for_each = local.https ? [] : [1]
      content {
        target_group {
          arn    = aws_lb_target_group.read.arn
          weight = local.read_weight
        }
        target_group {
          arn    = aws_lb_target_group.write.arn
          weight = local.write_weight
        }
        stickiness {
          enabled  = false
          duration = 1
        }
      }
    }
  }

  tags = local.tags
}

resource "aws_lb_listener" "https" {
  count = local.https ? 1 : 0

  load_balancer_arn = aws_lb.this.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = var.ssl_policy
  certificate_arn   = var.certificate_arn

  default_action {
    type = "forward"

    forward {
      target_group {
        arn    = aws_lb_target_group.read.arn
        weight = local.read_weight
      }
      target_group {
        arn    = aws_lb_target_group.write.arn
        weight = local.write_weight
      }
      stickiness {
        enabled  = false
        duration = 1
      }
    }
  }

  tags = local.tags
}

# The replication endpoints are for the servers only (they also check
# NEBULAGC_REPLICATION_SECRET), and /metrics has no authentication (Prometheus scrapes each node
# at its private address): through the ALB neither exists, whatever the method.
resource "aws_lb_listener_rule" "deny_internal" {
  listener_arn = local.api_listener_arn
  priority     = 10

  action {
    type = "fixed-response"
    fixed_response {
      content_type = "application/json"
      status_code  = "404"
      message_body = "{\"error\":\"not found\",\"code\":\"NOT_FOUND\"}"
    }
  }

  condition {
    path_pattern {
      values = ["/internal/*", "/metrics"]
    }
  }

  tags = local.tags
}

# Every method the API writes with goes to the master. An ALB condition takes at most three
# values, hence two rules; GET, HEAD and OPTIONS fall through to the default action (reads).
resource "aws_lb_listener_rule" "writes" {
  listener_arn = local.api_listener_arn
  priority     = 20

  action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.write.arn
  }

  condition {
    http_request_method {
      values = ["POST", "PUT", "PATCH"]
    }
  }

  tags = local.tags
}

resource "aws_lb_listener_rule" "deletes" {
  listener_arn = local.api_listener_arn
  priority     = 21

  action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.write.arn
  }

  condition {
    http_request_method {
      values = ["DELETE"]
    }
  }

  tags = local.tags
}

resource "aws_lb_target_group_attachment" "write" {
  for_each = aws_instance.server

  target_group_arn = aws_lb_target_group.write.arn
  target_id        = each.value.id
  port             = var.api_port
}

resource "aws_lb_target_group_attachment" "read" {
  for_each = aws_instance.server

  target_group_arn = aws_lb_target_group.read.arn
  target_id        = each.value.id
  port             = var.api_port
}
