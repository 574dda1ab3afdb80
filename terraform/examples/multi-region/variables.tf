variable "cluster_name" {
  description = "Name of the Isthmus cluster (resource names, isthmus:cluster tag). `isthmus fleet tfvars` sets it from the plan's spec name."
  type        = string
  default     = "isthmus"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,23}$", var.cluster_name))
    error_message = "cluster_name must be 1-24 characters of a-z, 0-9 and '-', starting with a letter."
  }
}

variable "sites" {
  description = "Isthmus sites to provision, keyed by Spec region name: the provider region (`cloud_region`, one of us-east-1, eu-west-1, ap-southeast-1, the regions with a provider alias here) and worker instances per instance type. Made by `isthmus fleet tfvars PLAN`."
  type = map(object({
    cloud_region    = string
    instance_counts = optional(map(number), {})
  }))

  validation {
    condition     = length(var.sites) > 0
    error_message = "sites is empty. To fix: generate it with `isthmus fleet tfvars PLAN > plan.auto.tfvars.json`."
  }

  validation {
    condition     = alltrue([for s in values(var.sites) : contains(["us-east-1", "eu-west-1", "ap-southeast-1"], s.cloud_region)])
    error_message = "every sites[*].cloud_region must be us-east-1, eu-west-1 or ap-southeast-1 (the provider aliases of this example). To fix: map your Spec regions to those, or add a provider alias and module block."
  }

  validation {
    condition     = length(distinct([for s in values(var.sites) : s.cloud_region])) == length(var.sites)
    error_message = "two sites share one cloud_region. To fix: give each Isthmus site its own provider region."
  }

  validation {
    condition     = alltrue(flatten([for s in values(var.sites) : [for n in values(s.instance_counts) : n >= 0 && floor(n) == n]]))
    error_message = "instance counts must be whole numbers >= 0."
  }
}

variable "head_site" {
  description = "Site (a key of `sites`) whose region also runs the Ray head node."
  type        = string

  validation {
    condition     = contains(keys(var.sites), var.head_site)
    error_message = "head_site is not a key of sites. To fix: name one of the sites, e.g. the one with the most instances."
  }
}

variable "region_cidrs" {
  description = "VPC CIDR per provider region; pairwise disjoint, since VPC peering routes between them."
  type        = map(string)
  default = {
    "us-east-1"      = "10.10.0.0/16"
    "eu-west-1"      = "10.20.0.0/16"
    "ap-southeast-1" = "10.30.0.0/16"
  }

  validation {
    condition     = alltrue([for c in values(var.region_cidrs) : can(cidrhost(c, 0))])
    error_message = "region_cidrs values must be IPv4 CIDRs such as \"10.10.0.0/16\"."
  }
}

variable "ami_ids" {
  description = "AMI per provider region; a region missing here uses the module's SSM-parameter AMI lookup."
  type        = map(string)
  default     = {}
}

variable "head_instance_type" {
  description = "EC2 instance type of the Ray head node."
  type        = string
  default     = "m5.large"
}

variable "isthmus_package" {
  description = "pip requirement that installs Isthmus on every node."
  type        = string
  default     = "isthmus"
}

variable "client_cidrs" {
  description = "Extra CIDRs (edge networks) allowed to reach Serve ingress and the control plane."
  type        = list(string)
  default     = []
}

variable "aws_endpoint_url" {
  description = "When set (e.g. \"http://127.0.0.1:5000\" for moto_server), every provider sends every API call there and skips credential, account and region checks. null: real AWS."
  type        = string
  default     = null

  validation {
    condition     = var.aws_endpoint_url == null || can(regex("^https?://", var.aws_endpoint_url))
    error_message = "aws_endpoint_url must start with http:// or https://, or be null."
  }
}
