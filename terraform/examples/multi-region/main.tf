# Isthmus across up to three AWS regions: one ray-region module per provider region that has a site
# in var.sites (the head region also runs the Ray head), and VPC peering between every two of them.

locals {
  site_of      = { for name, s in var.sites : s.cloud_region => name } # provider region -> Isthmus site
  head_region  = var.sites[var.head_site].cloud_region
  head_address = cidrhost(cidrsubnet(var.region_cidrs[local.head_region], 4, 0), 10)

  # Arguments of each region's module; a region with no site gets none (its module has count = 0).
  region = { for r, site in local.site_of : r => {
    site            = site
    role            = r == local.head_region ? "head" : "worker"
    cidr_block      = var.region_cidrs[r]
    instance_counts = var.sites[site].instance_counts
    ami_id          = lookup(var.ami_ids, r, null)
  } }
  cluster_cidrs = [for r in keys(local.region) : var.region_cidrs[r]]
}

module "us_east_1" {
  source    = "../../modules/ray-region"
  count     = contains(keys(local.region), "us-east-1") ? 1 : 0
  providers = { aws = aws.us_east_1 }

  cluster_name       = var.cluster_name
  site               = local.region["us-east-1"].site
  role               = local.region["us-east-1"].role
  cidr_block         = local.region["us-east-1"].cidr_block
  instance_counts    = local.region["us-east-1"].instance_counts
  ami_id             = local.region["us-east-1"].ami_id
  head_address       = local.head_address
  cluster_cidrs      = local.cluster_cidrs
  client_cidrs       = var.client_cidrs
  head_instance_type = var.head_instance_type
  isthmus_package    = var.isthmus_package
}

module "eu_west_1" {
  source    = "../../modules/ray-region"
  count     = contains(keys(local.region), "eu-west-1") ? 1 : 0
  providers = { aws = aws.eu_west_1 }

  cluster_name       = var.cluster_name
  site               = local.region["eu-west-1"].site
  role               = local.region["eu-west-1"].role
  cidr_block         = local.region["eu-west-1"].cidr_block
  instance_counts    = local.region["eu-west-1"].instance_counts
  ami_id             = local.region["eu-west-1"].ami_id
  head_address       = local.head_address
  cluster_cidrs      = local.cluster_cidrs
  client_cidrs       = var.client_cidrs
  head_instance_type = var.head_instance_type
  isthmus_package    = var.isthmus_package
}

module "ap_southeast_1" {
  source    = "../../modules/ray-region"
  count     = contains(keys(local.region), "ap-southeast-1") ? 1 : 0
  providers = { aws = aws.ap_southeast_1 }

  cluster_name       = var.cluster_name
  site               = local.region["ap-southeast-1"].site
  role               = local.region["ap-southeast-1"].role
  cidr_block         = local.region["ap-southeast-1"].cidr_block
  instance_counts    = local.region["ap-southeast-1"].instance_counts
  ami_id             = local.region["ap-southeast-1"].ami_id
  head_address       = local.head_address
  cluster_cidrs      = local.cluster_cidrs
  client_cidrs       = var.client_cidrs
  head_instance_type = var.head_instance_type
  isthmus_package    = var.isthmus_package
}

# ------------------------------------------------------------------ peering (full mesh)

module "peer_us_east_1_eu_west_1" {
  source    = "../../modules/vpc-peering"
  count     = length(module.us_east_1) * length(module.eu_west_1)
  providers = { aws.requester = aws.us_east_1, aws.accepter = aws.eu_west_1 }

  name      = "${var.cluster_name}-${module.us_east_1[0].site}-${module.eu_west_1[0].site}"
  requester = module.us_east_1[0]
  accepter  = merge(module.eu_west_1[0], { region = "eu-west-1" })
  tags      = { "isthmus:cluster" = var.cluster_name }
}

module "peer_us_east_1_ap_southeast_1" {
  source    = "../../modules/vpc-peering"
  count     = length(module.us_east_1) * length(module.ap_southeast_1)
  providers = { aws.requester = aws.us_east_1, aws.accepter = aws.ap_southeast_1 }

  name      = "${var.cluster_name}-${module.us_east_1[0].site}-${module.ap_southeast_1[0].site}"
  requester = module.us_east_1[0]
  accepter  = merge(module.ap_southeast_1[0], { region = "ap-southeast-1" })
  tags      = { "isthmus:cluster" = var.cluster_name }
}

module "peer_eu_west_1_ap_southeast_1" {
  source    = "../../modules/vpc-peering"
  count     = length(module.eu_west_1) * length(module.ap_southeast_1)
  providers = { aws.requester = aws.eu_west_1, aws.accepter = aws.ap_southeast_1 }

  name      = "${var.cluster_name}-${module.eu_west_1[0].site}-${module.ap_southeast_1[0].site}"
  requester = module.eu_west_1[0]
  accepter  = merge(module.ap_southeast_1[0], { region = "ap-southeast-1" })
  tags      = { "isthmus:cluster" = var.cluster_name }
}
