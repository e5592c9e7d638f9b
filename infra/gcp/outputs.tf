# The same outputs on every cloud: see infra/README.md.

output "app_url" {
  description = "URL of the app: http://<public ip>:<app_port>."
  value       = try("http://${google_compute_address.public.address}:${var.app_port}", null)
}

output "instance_id" {
  description = "The app VM (projects/<project>/zones/<zone>/instances/<name>)."
  value       = try(google_compute_instance.this.id, null)
}

output "public_ip" {
  description = "Public address of the app VM."
  value       = try(google_compute_address.public.address, null)
}

output "private_ip" {
  description = "Private address of the app VM (the Workers' Node URL uses it)."
  value       = try(google_compute_address.private.address, null)
}

output "bucket" {
  description = "Name of the GCS bucket holding the blobs."
  value       = try(google_storage_bucket.this.name, null)
}

output "worker_group" {
  description = "Self link of the Workers' regional managed instance group (null for a Network)."
  value       = try(google_compute_region_instance_group_manager.worker[0].self_link, null)
}

output "database_url_secret" {
  description = "Secret Manager secret (projects/<project>/secrets/<id>) holding the database URL; null when embedded."
  value       = try(google_secret_manager_secret.database[0].id, null)
}

output "region" {
  description = "Region the deployment runs in."
  value       = var.region
}

output "cloud" {
  description = "The cloud: gcp."
  value       = "gcp"
}
