variable "name" {
  description = "Name tag of the peering connection, e.g. \"isthmus-us-east-eu-west\"."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,62}$", var.name))
    error_message = "name must be 1-63 characters of a-z, 0-9 and '-', starting with a letter."
  }
}

variable "requester" {
  description = "The VPC that requests the peering (in the aws.requester provider's region): its ID, CIDR and the route table that gets a route to the accepter."
  type = object({
    vpc_id         = string
    cidr_block     = string
    route_table_id = string
  })
}

variable "accepter" {
  description = "The VPC that accepts it (in the aws.accepter provider's region, named by `region`): its ID, CIDR and the route table that gets a route back."
  type = object({
    vpc_id         = string
    cidr_block     = string
    route_table_id = string
    region         = string
  })

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.accepter.region))
    error_message = "accepter.region must be an AWS region name such as \"eu-west-1\"."
  }
}

variable "tags" {
  description = "Tags of the peering connection (both sides)."
  type        = map(string)
  default     = {}
}
