output "id" {
  description = "ID of the VPC peering connection."
  value       = aws_vpc_peering_connection.this.id
}

output "accept_status" {
  description = "Status of the peering connection as the accepter sees it (\"active\" once accepted)."
  value       = aws_vpc_peering_connection_accepter.this.accept_status
}
