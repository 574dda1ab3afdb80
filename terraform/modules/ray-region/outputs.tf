output "site" {
  description = "Isthmus site name of this region (the Spec's `regions[].name`)."
  value       = var.site
}

output "cloud_region" {
  description = "AWS region this module was applied in (the Spec's `regions[].cloud_region`)."
  value       = data.aws_region.current.name
}

output "vpc_id" {
  description = "ID of this region's VPC."
  value       = aws_vpc.this.id
}

output "cidr_block" {
  description = "CIDR of this region's VPC."
  value       = aws_vpc.this.cidr_block
}

output "subnet_id" {
  description = "ID of the nodes' subnet, cidrsubnet(cidr_block, 4, 0)."
  value       = aws_subnet.this.id
}

output "route_table_id" {
  description = "Route table of the nodes' subnet; add routes to peered regions here."
  value       = aws_route_table.this.id
}

output "security_group_id" {
  description = "Security group of every node in this region."
  value       = aws_security_group.nodes.id
}

output "instance_counts" {
  description = "Worker instances per instance type, as applied (min = max = desired of each autoscaling group)."
  value       = { for t, asg in aws_autoscaling_group.workers : t => asg.desired_capacity }
}

output "autoscaling_groups" {
  description = "Autoscaling group name per instance type."
  value       = { for t, asg in aws_autoscaling_group.workers : t => asg.name }
}

output "head_address" {
  description = "Private IP of the Ray head if this region hosts it (role \"head\"), else null."
  value       = var.role == "head" ? aws_instance.head[0].private_ip : null
}

output "node_role_arn" {
  description = "IAM role of the nodes (logs of this region only)."
  value       = aws_iam_role.nodes.arn
}
