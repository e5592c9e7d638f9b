# The same outputs on every cloud: see infra/README.md.

output "app_url" {
  description = "http://<public ip>:<app_port> of the app."
  value       = try("http://${aws_instance.this.public_ip}:${var.app_port}", null)
}

output "instance_id" {
  description = "EC2 instance id of the app VM."
  value       = try(aws_instance.this.id, null)
}

output "public_ip" {
  description = "Public IPv4 address of the app VM."
  value       = try(aws_instance.this.public_ip, null)
}

output "private_ip" {
  description = "Private IPv4 address of the app VM (the Workers' Node URL uses it)."
  value       = try(aws_instance.this.private_ip, null)
}

output "bucket" {
  description = "Name of the S3 bucket of blobs."
  value       = try(aws_s3_bucket.this.bucket, null)
}

output "worker_group" {
  description = "Name of the Workers' Auto Scaling group (null for a Network)."
  value       = try(aws_autoscaling_group.this[0].name, null)
}

output "database_url_secret" {
  description = "ARN of the Secrets Manager secret RDS keeps the database credentials in (null when embedded); never the credentials."
  value       = try(aws_db_instance.this[0].master_user_secret[0].secret_arn, null)
}

output "region" {
  description = "AWS region of the deployment."
  value       = var.region
}

output "cloud" {
  description = "Always aws."
  value       = "aws"
}
