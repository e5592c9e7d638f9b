# The same outputs on every cloud: see infra/README.md.

output "app_url" {
  description = "URL of the app: http://<public ip>:<app_port>."
  value       = try("http://${azurerm_public_ip.this.ip_address}:${var.app_port}", null)
}

output "instance_id" {
  description = "Resource id of the app VM."
  value       = try(azurerm_linux_virtual_machine.this.id, null)
}

output "public_ip" {
  description = "Public address of the app VM."
  value       = try(azurerm_public_ip.this.ip_address, null)
}

output "private_ip" {
  description = "Private address of the app VM (the Workers' Node URL uses it)."
  value       = try(azurerm_network_interface.this.private_ip_address, null)
}

output "bucket" {
  description = "URL of the private Blob container holding the blobs."
  value       = try(local.container_url, null)
}

output "worker_group" {
  description = "Resource id of the Workers' VM scale set (null for a Network)."
  value       = try(azurerm_linux_virtual_machine_scale_set.worker[0].id, null)
}

output "database_url_secret" {
  description = "Versionless Key Vault secret id (https://<vault>.vault.azure.net/secrets/<name>) holding the database URL; null when embedded."
  value       = try(azurerm_key_vault_secret.database[0].versionless_id, null)
}

output "region" {
  description = "Region the deployment runs in."
  value       = var.region
}

output "cloud" {
  description = "The cloud: azure."
  value       = "azure"
}
