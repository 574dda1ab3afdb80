terraform {
  # optional() object attributes with defaults need 1.3; tested with 1.11.
  required_version = ">= 1.3"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.100.0, < 6.0.0"
    }
  }
}
