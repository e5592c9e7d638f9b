# The same inputs on every cloud: see infra/README.md.

variable "app" {
  description = "Which PyGrid server the VM runs: node or network."
  type        = string

  validation {
    condition     = contains(["node", "network"], var.app)
    error_message = "app must be \"node\" or \"network\"."
  }
}

variable "name" {
  description = "Deployment name; prefixes every resource."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "name must match ^[a-z][a-z0-9-]{1,30}$."
  }
}

variable "region" {
  description = "Azure region (location), e.g. uksouth; the subscription comes from the azurerm provider passed in."
  type        = string
}

variable "instance_type" {
  description = "Azure VM size of the app VM."
  type        = string
  default     = "Standard_B2s"
}

variable "image_id" {
  description = "Boot image of the app VM and the Workers; null = the latest Debian 12 Gen2 image (Debian debian-12 12-gen2); else a managed or gallery image id."
  type        = string
  default     = null
}

variable "pygrid_version" {
  description = "The exact pygrid version the startup scripts install (replaces __PYGRID_VERSION__)."
  type        = string

  validation {
    condition     = can(regex("^[0-9A-Za-z.+!-]+$", var.pygrid_version))
    error_message = "pygrid_version must be one exact version, e.g. 1.2.3."
  }
}

variable "app_port" {
  description = "The one port of the app opened to app_cidrs."
  type        = number
  default     = 5000

  validation {
    condition     = var.app_port >= 1 && var.app_port <= 65535 && var.app_port != 22 && floor(var.app_port) == var.app_port
    error_message = "app_port must be a TCP port other than 22."
  }
}

variable "app_cidrs" {
  description = "CIDRs allowed to reach app_port."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = alltrue([for cidr in var.app_cidrs : can(cidrhost(cidr, 0))])
    error_message = "app_cidrs must be CIDR blocks."
  }
}

variable "allowed_cidrs" {
  description = "CIDRs allowed to reach SSH (22); empty = SSH closed. Never the whole internet."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for cidr in var.allowed_cidrs : can(cidrhost(cidr, 0)) && !endswith(cidr, "/0")])
    error_message = "allowed_cidrs must be CIDR blocks narrower than /0: SSH is never open to the internet."
  }
}

variable "ssh_public_key" {
  description = "OpenSSH public key for the login user gridadmin on the VMs; required on Azure, where a password-less Linux VM needs a key (SSH stays closed unless allowed_cidrs is set)."
  type        = string
  default     = null

  validation {
    condition     = var.ssh_public_key != null
    error_message = "Azure needs ssh_public_key: a Linux VM without a password must have an SSH key. SSH itself stays closed unless allowed_cidrs is set."
  }
}

variable "database" {
  description = "embedded (SQLite on the VM) or managed (Azure Database for PostgreSQL flexible server; its URL only in Key Vault)."
  type        = string
  default     = "embedded"

  validation {
    condition     = contains(["embedded", "managed"], var.database)
    error_message = "database must be \"embedded\" or \"managed\"."
  }
}

variable "workers_min" {
  description = "Least number of Workers in the Worker group."
  type        = number
  default     = 0

  validation {
    condition     = var.workers_min >= 0 && floor(var.workers_min) == var.workers_min
    error_message = "workers_min must be a whole number >= 0."
  }
}

variable "workers_max" {
  description = "Largest number of Workers in the Worker group (the Node's autoscaler stays within)."
  type        = number
  default     = 0

  validation {
    condition     = var.workers_max >= 0 && floor(var.workers_max) == var.workers_max
    error_message = "workers_max must be a whole number >= 0."
  }
}

variable "worker_instance_type" {
  description = "Azure VM size of a Worker."
  type        = string
  default     = "Standard_B2s"
}

variable "app_user_data" {
  description = "Startup script of the app VM (rendered by the CLI); placeholders listed in main.tf locals are replaced."
  type        = string
}

variable "worker_user_data" {
  description = "Startup script of a Worker (rendered by the CLI); placeholders listed in main.tf locals are replaced (__PYGRID_NODE_URL__ becomes the Node's private URL)."
  type        = string
}

variable "tags" {
  description = "Tags on every resource that takes them."
  type        = map(string)
  default     = {}
}
