terraform {
  # 1.5: strcontains(); preconditions, terraform_data (1.4) and optional attributes are older.
  required_version = ">= 1.5"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.0"
    }
  }
}
