terraform {
  required_version = ">= 1.9" # head_site validation refers to var.sites

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "5.100.0" # the version mirrored for offline `terraform init -plugin-dir=/opt/tf-plugins`
    }
  }
}
