terraform {
  # 1.5: strcontains(); preconditions and optional attributes are older.
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # Tested with 5.100 (offline mirror + moto). 6.x renames data.aws_region.name.
      version = ">= 5.0, < 6.0"
    }
  }
}
