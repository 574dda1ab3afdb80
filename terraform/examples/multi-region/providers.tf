# One provider alias per region. With aws_endpoint_url set, every service these modules use is sent
# to that endpoint (a local stand-in such as moto_server) and the provider skips its AWS-only checks.

locals {
  stand_in = var.aws_endpoint_url != null
  endpoints = local.stand_in ? [{
    autoscaling = var.aws_endpoint_url
    ec2         = var.aws_endpoint_url
    iam         = var.aws_endpoint_url
    logs        = var.aws_endpoint_url
    ssm         = var.aws_endpoint_url
    sts         = var.aws_endpoint_url
  }] : []
}

provider "aws" {
  alias                       = "us_east_1"
  region                      = "us-east-1"
  skip_credentials_validation = local.stand_in
  skip_metadata_api_check     = local.stand_in
  skip_requesting_account_id  = local.stand_in
  skip_region_validation      = local.stand_in
  dynamic "endpoints" {
    for_each = local.endpoints
    content {
      autoscaling = endpoints.value.autoscaling
      ec2         = endpoints.value.ec2
      iam         = endpoints.value.iam
      logs        = endpoints.value.logs
      ssm         = endpoints.value.ssm
      sts         = endpoints.value.sts
    }
  }
}

provider "aws" {
  alias                       = "eu_west_1"
  region                      = "eu-west-1"
  skip_credentials_validation = local.stand_in
  skip_metadata_api_check     = local.stand_in
  skip_requesting_account_id  = local.stand_in
  skip_region_validation      = local.stand_in
  dynamic "endpoints" {
    for_each = local.endpoints
    content {
      autoscaling = endpoints.value.autoscaling
      ec2         = endpoints.value.ec2
      iam         = endpoints.value.iam
      logs        = endpoints.value.logs
      ssm         = endpoints.value.ssm
      sts         = endpoints.value.sts
    }
  }
}

provider "aws" {
  alias                       = "ap_southeast_1"
  region                      = "ap-southeast-1"
  skip_credentials_validation = local.stand_in
  skip_metadata_api_check     = local.stand_in
  skip_requesting_account_id  = local.stand_in
  skip_region_validation      = local.stand_in
  dynamic "endpoints" {
    for_each = local.endpoints
    content {
      autoscaling = endpoints.value.autoscaling
      ec2         = endpoints.value.ec2
      iam         = endpoints.value.iam
      logs        = endpoints.value.logs
      ssm         = endpoints.value.ssm
      sts         = endpoints.value.sts
    }
  }
}
