locals {
  regions  = concat(module.us_east_1, module.eu_west_1, module.ap_southeast_1)
  peerings = concat(module.peer_us_east_1_eu_west_1, module.peer_us_east_1_ap_southeast_1, module.peer_eu_west_1_ap_southeast_1)
}

output "isthmus_fleet" {
  description = "The fleet as applied, read by `isthmus fleet from-terraform DIR`: cluster name, head site and address, and per Isthmus site its provider region, network IDs and worker instances per instance type."
  value = {
    cluster_name = var.cluster_name
    head_site    = var.head_site
    head_address = one([for m in local.regions : m.head_address if m.head_address != null])
    sites = { for m in local.regions : m.site => {
      cloud_region       = m.cloud_region
      vpc_id             = m.vpc_id
      cidr_block         = m.cidr_block
      security_group_id  = m.security_group_id
      instance_counts    = m.instance_counts
      autoscaling_groups = m.autoscaling_groups
    } }
    peering_connection_ids = [for p in local.peerings : p.id]
  }
}

output "ray_address" {
  description = "Address to pass to `ray start --address` or RAY_ADDRESS from inside the cluster's networks."
  value       = "${local.head_address}:6379"
}
