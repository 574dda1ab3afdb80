# One Isthmus region: VPC + public subnet, a security group that opens Ray, Serve and the control
# plane only to the cluster's CIDRs, least-privilege node IAM, and per instance type a launch template
# and an autoscaling group whose nodes join the Ray head with the resource `region:<site>`.

locals {
  name        = "${var.cluster_name}-${var.site}"
  subnet_cidr = cidrsubnet(var.cidr_block, 4, 0)
  ami_id      = var.ami_id != null ? var.ami_id : nonsensitive(data.aws_ssm_parameter.ami[0].value)
  base_tags = merge(var.tags, {
    "isthmus:cluster" = var.cluster_name
    "isthmus:region"  = var.site
  })

  # Ray's internal ports between nodes: GCS, node manager, object manager, runtime-env agent,
  # dashboard agent gRPC, metrics; then the worker range. Pinned so the security group can be narrow.
  ray_node_ports = {
    gcs                  = var.ports.ray_gcs
    node_manager         = var.ports.ray_gcs + 1
    object_manager       = var.ports.ray_gcs + 2
    runtime_env_agent    = var.ports.ray_gcs + 3
    dashboard_agent_grpc = var.ports.ray_gcs + 4
    metrics_export       = var.ports.ray_gcs + 5
    min_worker           = 10002
    max_worker           = 10999
    dashboard_agent_http = 52365
  }
  cluster_ingress = [
    { description = "Ray GCS and node services", from = var.ports.ray_gcs, to = var.ports.ray_gcs + 5 },
    { description = "Ray worker processes", from = 10002, to = 10999 },
    { description = "Ray dashboard agent", from = 52365, to = 52365 },
    { description = "Ray dashboard", from = var.ports.ray_dashboard, to = var.ports.ray_dashboard },
  ]
  client_ingress = [
    { description = "Serve HTTP ingress", from = var.ports.serve_http, to = var.ports.serve_http },
    { description = "Serve gRPC ingress", from = var.ports.serve_grpc, to = var.ports.serve_grpc },
    { description = "Isthmus control plane (gRPC, mTLS)", from = var.ports.control_plane, to = var.ports.control_plane },
  ]
  ingress_cidrs = distinct(concat([var.cidr_block], var.cluster_cidrs))

  user_data = { for kind in concat(keys(var.instance_counts), ["head"]) : kind => templatefile("${path.module}/user_data.sh.tftpl", {
    head            = kind == "head"
    head_address    = var.head_address
    ports           = local.ray_node_ports
    dashboard_port  = var.ports.ray_dashboard
    isthmus_package = var.isthmus_package
    resources = jsonencode(kind == "head" ? { "head" = 1 } : {
      "region:${var.site}"    = 1
      "instance_type:${kind}" = 1
    })
  }) }
}

data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

data "aws_ssm_parameter" "ami" {
  count = var.ami_id == null ? 1 : 0
  name  = var.ami_ssm_parameter
}

# ------------------------------------------------------------------ network

resource "aws_vpc" "this" {
  cidr_block           = var.cidr_block
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = merge(local.base_tags, { Name = local.name })
}

resource "aws_internet_gateway" "this" {
  vpc_id = aws_vpc.this.id
  tags   = merge(local.base_tags, { Name = local.name })
}

resource "aws_subnet" "this" {
  vpc_id                  = aws_vpc.this.id
  cidr_block              = local.subnet_cidr
  map_public_ip_on_launch = true # nodes pip-install Isthmus at boot; ingress stays closed (security group)
  tags                    = merge(local.base_tags, { Name = local.name })
}

resource "aws_route_table" "this" {
  vpc_id = aws_vpc.this.id
  tags   = merge(local.base_tags, { Name = local.name })
}

resource "aws_route" "internet" {
  route_table_id         = aws_route_table.this.id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.this.id
}

resource "aws_route_table_association" "this" {
  subnet_id      = aws_subnet.this.id
  route_table_id = aws_route_table.this.id
}

resource "aws_security_group" "nodes" {
  name        = "${local.name}-nodes"
  description = "Isthmus ${var.site}: Ray, Serve and control plane from the cluster CIDRs only"
  vpc_id      = aws_vpc.this.id
  tags        = merge(local.base_tags, { Name = "${local.name}-nodes" })

  dynamic "ingress" {
    for_each = local.cluster_ingress
    content {
      description = ingress.value.description
      protocol    = "tcp"
      from_port   = ingress.value.from
      to_port     = ingress.value.to
      cidr_blocks = local.ingress_cidrs
    }
  }

  dynamic "ingress" {
    for_each = local.client_ingress
    content {
      description = ingress.value.description
      protocol    = "tcp"
      from_port   = ingress.value.from
      to_port     = ingress.value.to
      cidr_blocks = distinct(concat(local.ingress_cidrs, var.client_cidrs))
    }
  }

  egress {
    description = "Package installs, cross-region Ray traffic"
    protocol    = "-1"
    from_port   = 0
    to_port     = 0
    cidr_blocks = ["0.0.0.0/0"]
  }
}

# ------------------------------------------------------------------ IAM: logs of this region only

resource "aws_cloudwatch_log_group" "nodes" {
  name              = "/isthmus/${var.cluster_name}/${var.site}"
  retention_in_days = 14
  tags              = local.base_tags
}

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "nodes" {
  statement {
    sid       = "WriteOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["arn:${data.aws_partition.current.partition}:logs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:log-group:${aws_cloudwatch_log_group.nodes.name}:*"]
  }
}

resource "aws_iam_role" "nodes" {
  name               = "${local.name}-nodes"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = local.base_tags
}

resource "aws_iam_role_policy" "nodes" {
  name   = "isthmus-node"
  role   = aws_iam_role.nodes.id
  policy = data.aws_iam_policy_document.nodes.json
}

resource "aws_iam_instance_profile" "nodes" {
  name = "${local.name}-nodes"
  role = aws_iam_role.nodes.name
  tags = local.base_tags
}

# ------------------------------------------------------------------ nodes

resource "aws_launch_template" "workers" {
  for_each = var.instance_counts

  name                   = "${local.name}-${replace(each.key, ".", "-")}"
  image_id               = local.ami_id
  instance_type          = each.key
  vpc_security_group_ids = [aws_security_group.nodes.id]
  user_data              = base64encode(local.user_data[each.key])
  update_default_version = true

  iam_instance_profile {
    arn = aws_iam_instance_profile.nodes.arn
  }

  metadata_options {
    http_tokens   = "required"
    http_endpoint = "enabled"
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = var.root_volume_gb
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.base_tags, { "isthmus:instance-type" = each.key, "isthmus:role" = "worker" })
  }

  tags = merge(local.base_tags, { "isthmus:instance-type" = each.key })
}

resource "aws_autoscaling_group" "workers" {
  for_each = var.instance_counts

  name                = "${local.name}-${replace(each.key, ".", "-")}"
  min_size            = each.value
  max_size            = each.value
  desired_capacity    = each.value
  vpc_zone_identifier = [aws_subnet.this.id]
  health_check_type   = "EC2"

  launch_template {
    id      = aws_launch_template.workers[each.key].id
    version = aws_launch_template.workers[each.key].latest_version
  }

  instance_refresh {
    strategy = "Rolling"
  }

  dynamic "tag" {
    for_each = merge(local.base_tags, { Name = "${local.name}-${each.key}", "isthmus:instance-type" = each.key, "isthmus:role" = "worker" })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }
}

resource "aws_instance" "head" {
  count = var.role == "head" ? 1 : 0

  ami                    = local.ami_id
  instance_type          = var.head_instance_type
  subnet_id              = aws_subnet.this.id
  private_ip             = var.head_address
  vpc_security_group_ids = [aws_security_group.nodes.id]
  iam_instance_profile   = aws_iam_instance_profile.nodes.name
  user_data_base64       = base64encode(local.user_data["head"])

  metadata_options {
    http_tokens   = "required"
    http_endpoint = "enabled"
  }

  root_block_device {
    volume_size = var.root_volume_gb
    volume_type = "gp3"
    encrypted   = true
  }

  tags = merge(local.base_tags, { Name = "${local.name}-head", "isthmus:instance-type" = var.head_instance_type, "isthmus:role" = "head" })
}
