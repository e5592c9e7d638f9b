# PyGrid on GCP: a VPC, the app VM, a private GCS bucket, an optional Cloud SQL PostgreSQL whose
# URL lives only in Secret Manager, and the Worker group as a regional managed instance group.
# The google provider (project, credentials) comes from the root module the CLI renders.

data "google_client_config" "this" {}

data "google_compute_zones" "this" {
  region = var.region
  status = "UP"
}

locals {
  project = data.google_client_config.this.project
  zone    = data.google_compute_zones.this.names[0]

  # Service account ids are 6-30 characters: long names keep a prefix plus a hash.
  short = length(var.name) <= 24 ? var.name : "${substr(var.name, 0, 19)}-${substr(sha1(var.name), 0, 4)}"

  # GCS bucket names are global: the project hash keeps two projects' "alice" apart.
  bucket_name       = "${var.name}-blobs-${substr(sha1(local.project), 0, 8)}"
  node              = var.app == "node"
  worker_group_name = "${var.name}-workers"
  worker_group_id   = "projects/${local.project}/regions/${var.region}/instanceGroupManagers/${local.worker_group_name}"
  managed_database  = var.database == "managed"
  database_name     = "pygrid"
  database_user     = "pygrid"
  database_port     = 5432
  secret_id         = "${var.name}-database-url"
  # The secret the Node publishes its Workers' token in (pygrid.providers.worker_secret).
  worker_token_secret = local.node ? google_secret_manager_secret.worker_token[0].id : ""

  image = coalesce(var.image_id, "debian-cloud/debian-12")

  # GCP labels: lower-case keys and values of [a-z0-9_-] only.
  labels = merge(
    { for key, value in var.tags : replace(lower(key), "/[^a-z0-9_-]/", "_") => replace(lower(value), "/[^a-z0-9_-]/", "_") },
    {
      "pygrid-deployment" = var.name
      "pygrid-app"        = var.app
      "pygrid-version"    = replace(lower(var.pygrid_version), "/[^a-z0-9_-]/", "_")
    },
  )

  app_tag    = "${var.name}-app"
  worker_tag = "${var.name}-worker"

  # Empty ssh-keys = no key: with project keys blocked, nobody can log in. The login user is
  # gridadmin: "pygrid" is the unprivileged system user the startup script runs the server as.
  ssh_keys = var.ssh_public_key == null ? "" : "gridadmin:${trimspace(var.ssh_public_key)}"

  node_url = "http://${google_compute_address.private.address}:${var.app_port}"

  # Placeholders the startup scripts may use (the same set on every cloud). None is a secret: the
  # app reads the database URL from Secret Manager (__PYGRID_DATABASE_SECRET__) as its service
  # account, and the Workers their token (__PYGRID_WORKER_TOKEN_SECRET__) as theirs. The worker
  # group is a path the Compute API takes: projects/P/regions/R/.../NAME. __PYGRID_CLIENT_ID__ is
  # Azure's user-assigned identity: empty here, where a VM has one service account.
  app_user_data = replace(replace(replace(replace(replace(replace(replace(replace(replace(replace(
    var.app_user_data,
    "__PYGRID_VERSION__", var.pygrid_version),
    "__PYGRID_REGION__", var.region),
    "__PYGRID_BUCKET__", local.bucket_name),
    "__PYGRID_WORKER_GROUP__", local.node ? local.worker_group_id : ""),
    "__PYGRID_WORKER_TOKEN_SECRET__", local.worker_token_secret),
    "__PYGRID_CLIENT_ID__", ""),
    "__PYGRID_DATABASE_HOST__", local.managed_database ? google_sql_database_instance.this[0].private_ip_address : ""),
    "__PYGRID_DATABASE_PORT__", local.managed_database ? tostring(local.database_port) : ""),
    "__PYGRID_DATABASE_NAME__", local.managed_database ? local.database_name : ""),
    "__PYGRID_DATABASE_SECRET__", local.managed_database ? google_secret_manager_secret.database[0].id : "",
  )

  worker_user_data = replace(replace(replace(replace(replace(
    var.worker_user_data,
    "__PYGRID_VERSION__", var.pygrid_version),
    "__PYGRID_REGION__", var.region),
    "__PYGRID_NODE_URL__", local.node_url),
    "__PYGRID_WORKER_TOKEN_SECRET__", local.worker_token_secret),
    "__PYGRID_CLIENT_ID__", "",
  )
}

# --- network -------------------------------------------------------------------------------------

resource "google_compute_network" "this" {
  name                    = var.name
  auto_create_subnetworks = false

  lifecycle {
    precondition {
      condition     = var.workers_min <= var.workers_max
      error_message = "workers_min must be <= workers_max."
    }
    precondition {
      condition     = local.node || var.workers_max == 0
      error_message = "Workers run against a Node: workers_max must be 0 when app = network."
    }
  }
}

resource "google_compute_subnetwork" "this" {
  name                     = var.name
  region                   = var.region
  network                  = google_compute_network.this.id
  ip_cidr_range            = "10.20.0.0/24"
  private_ip_google_access = true

  log_config {
    aggregation_interval = "INTERVAL_10_MIN"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

# Workers have no public address: Cloud NAT lets them reach PyPI to install pygrid.
resource "google_compute_router" "this" {
  count = local.node ? 1 : 0

  name    = var.name
  region  = var.region
  network = google_compute_network.this.id
}

resource "google_compute_router_nat" "this" {
  count = local.node ? 1 : 0

  name                               = var.name
  router                             = google_compute_router.this[0].name
  region                             = var.region
  nat_ip_allocate_option             = "AUTO_ONLY"
  source_subnetwork_ip_ranges_to_nat = "ALL_SUBNETWORKS_ALL_IP_RANGES"

  log_config {
    enable = true
    filter = "ERRORS_ONLY"
  }
}

# A custom VPC has an implied deny-all ingress: these are the only ways in.
resource "google_compute_firewall" "app" {
  name          = "${var.name}-app"
  network       = google_compute_network.this.id
  direction     = "INGRESS"
  source_ranges = var.app_cidrs
  target_tags   = [local.app_tag]

  allow {
    protocol = "tcp"
    ports    = [tostring(var.app_port)]
  }
}

# Workers reach the Node on its private address even when app_cidrs is narrowed.
resource "google_compute_firewall" "workers_to_app" {
  count = local.node ? 1 : 0

  name        = "${var.name}-workers-to-app"
  network     = google_compute_network.this.id
  direction   = "INGRESS"
  source_tags = [local.worker_tag]
  target_tags = [local.app_tag]

  allow {
    protocol = "tcp"
    ports    = [tostring(var.app_port)]
  }
}

resource "google_compute_firewall" "ssh" {
  count = length(var.allowed_cidrs) > 0 ? 1 : 0

  name          = "${var.name}-ssh"
  network       = google_compute_network.this.id
  direction     = "INGRESS"
  source_ranges = var.allowed_cidrs
  target_tags   = [local.app_tag, local.worker_tag]

  allow {
    protocol = "tcp"
    ports    = ["22"]
  }
}

resource "google_compute_address" "public" {
  name         = "${var.name}-public"
  region       = var.region
  address_type = "EXTERNAL"
}

# A reserved private address: the Workers' Node URL survives a replaced app VM.
resource "google_compute_address" "private" {
  name         = "${var.name}-private"
  region       = var.region
  address_type = "INTERNAL"
  subnetwork   = google_compute_subnetwork.this.id
}

# --- identities ----------------------------------------------------------------------------------

resource "google_service_account" "app" {
  account_id   = "${local.short}-app"
  display_name = "PyGrid ${var.app} ${var.name}"
  description  = "The PyGrid app VM: objects in its bucket, its database secret, its Workers' token secret, resizing its Worker group."
}

# Workers talk HTTP to the Node: their account may only read their token's secret.
resource "google_service_account" "worker" {
  count = local.node ? 1 : 0

  account_id   = "${local.short}-wkr"
  display_name = "PyGrid workers ${var.name}"
  description  = "PyGrid Workers of ${var.name}; reads its worker token secret only."
}

# The Node's autoscaler resizes its own Worker group. No predefined role is that narrow
# (roles/compute.instanceAdmin.v1 can create and delete any VM), so a custom role holds the three
# permissions a resize needs: read the group, resize it (instanceGroupManagers.update), and poll
# the regional operation it returns.
resource "google_project_iam_custom_role" "resize_workers" {
  count = local.node ? 1 : 0

  project     = local.project
  role_id     = "pygrid_${replace(var.name, "-", "_")}_resize_workers"
  title       = "PyGrid ${var.name}: resize Worker group"
  description = "Read and resize the PyGrid Worker group of ${var.name}."
  permissions = [
    "compute.instanceGroupManagers.get",
    "compute.instanceGroupManagers.update",
    "compute.regionOperations.get",
  ]
}

# Custom roles bind at project level; the IAM condition narrows the group permissions to this
# deployment's group. Names without "/instanceGroupManagers/" (the operations) extract to "".
resource "google_project_iam_member" "resize_workers" {
  count = local.node ? 1 : 0

  project = local.project
  role    = google_project_iam_custom_role.resize_workers[0].name
  member  = google_service_account.app.member

  condition {
    title       = "only-${local.worker_group_name}"
    description = "Only the Worker group of ${var.name}."
    expression  = "resource.name.extract(\"/instanceGroupManagers/{name}\") == \"\" || resource.name.extract(\"/instanceGroupManagers/{name}\") == \"${local.worker_group_name}\""
  }
}

# --- blob store ----------------------------------------------------------------------------------

resource "google_storage_bucket" "this" {
  #checkov:skip=CKV_GCP_62:Usage logs need a second bucket per deployment; turn on Data Access audit logs for Cloud Storage where object-level audit is required.
  name                        = local.bucket_name
  location                    = upper(var.region)
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  # pygrid destroy removes the deployment's blobs with it, as on AWS.
  force_destroy = true
  labels        = local.labels

  versioning {
    enabled = true
  }

  # Versioning keeps overwritten blobs; old versions go after 30 days.
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 30
    }
    action {
      type = "Delete"
    }
  }
}

# roles/storage.objectUser: read, write, list and delete objects; no bucket or IAM administration.
resource "google_storage_bucket_iam_member" "app" {
  bucket = google_storage_bucket.this.name
  role   = "roles/storage.objectUser"
  member = google_service_account.app.member
}

# --- the app VM ----------------------------------------------------------------------------------

resource "google_compute_instance" "this" {
  #checkov:skip=CKV_GCP_40:The app VM serves PyGrid on its public address (app_url); only app_port (and SSH from allowed_cidrs) is open.
  #checkov:skip=CKV_GCP_38:Boot disks use Google-managed encryption; customer-supplied keys would have to be handed to the CLI.
  name                      = "${var.name}-app"
  machine_type              = var.instance_type
  zone                      = local.zone
  tags                      = [local.app_tag]
  labels                    = local.labels
  allow_stopping_for_update = true

  boot_disk {
    initialize_params {
      image  = local.image
      size   = 20
      type   = "pd-balanced"
      labels = local.labels
    }
  }

  network_interface {
    subnetwork = google_compute_subnetwork.this.id
    network_ip = google_compute_address.private.address

    access_config {
      nat_ip = google_compute_address.public.address
    }
  }

  # startup-script in metadata (not metadata_startup_script) changes in place: a new script never
  # replaces the VM and its embedded database.
  metadata = {
    "block-project-ssh-keys" = true
    "ssh-keys"               = local.ssh_keys
    "startup-script"         = local.app_user_data
  }

  service_account {
    email  = google_service_account.app.email
    scopes = ["cloud-platform"]
  }

  shielded_instance_config {
    enable_secure_boot          = true
    enable_vtpm                 = true
    enable_integrity_monitoring = true
  }

  lifecycle {
    # A newer Debian image must not replace the VM: its disk holds the embedded SQLite database.
    ignore_changes = [boot_disk[0].initialize_params[0].image]
  }

  depends_on = [
    google_storage_bucket_iam_member.app,
    google_secret_manager_secret_iam_member.app,
    google_secret_manager_secret_iam_member.worker_token_publish,
    google_secret_manager_secret_iam_member.worker_token_app,
  ]
}

# --- managed PostgreSQL (database = "managed") ---------------------------------------------------

# No random provider offline: Terraform's uuid() (crypto/rand, 122 random bits) is drawn once and
# kept by ignore_changes. It lives in state and Secret Manager only, never in metadata or outputs.
resource "terraform_data" "database_password" {
  count = local.managed_database ? 1 : 0

  input = sensitive(uuid())

  lifecycle {
    ignore_changes = [input]
  }
}

# Cloud SQL holds a deleted instance's name for about a week: a suffix drawn once per deployment
# lets pygrid destroy and deploy again under the same name.
resource "terraform_data" "database_instance_suffix" {
  count = local.managed_database ? 1 : 0

  input = substr(uuid(), 0, 8)

  lifecycle {
    ignore_changes = [input]
  }
}

# Cloud SQL with a private IP only: a peering range for Google's service network.
resource "google_compute_global_address" "database" {
  count = local.managed_database ? 1 : 0

  name          = "${var.name}-database"
  purpose       = "VPC_PEERING"
  address_type  = "INTERNAL"
  prefix_length = 20
  network       = google_compute_network.this.id
}

resource "google_service_networking_connection" "database" {
  count = local.managed_database ? 1 : 0

  network                 = google_compute_network.this.id
  service                 = "servicenetworking.googleapis.com"
  reserved_peering_ranges = [google_compute_global_address.database[0].name]
}

resource "google_sql_database_instance" "this" {
  #checkov:skip=CKV_GCP_6:Private IP only and ssl_mode ENCRYPTED_ONLY (TLS required); client certificates would need a second secret and cert rotation.
  #checkov:skip=CKV_GCP_79:Pinned to PostgreSQL 17, a major confirmed on Cloud SQL; majors are bumped deliberately, not by a scanner's list.
  #checkov:skip=CKV2_GCP_13:log_duration logs a line per statement (every FL request); log_min_duration_statement is the switch to use when profiling.
  count = local.managed_database ? 1 : 0

  name             = "${var.name}-pg-${terraform_data.database_instance_suffix[0].output}"
  region           = var.region
  database_version = "POSTGRES_17"
  # pygrid destroy tears the deployment down; backups are the safety net, not a stuck destroy.
  deletion_protection = false

  settings {
    tier              = "db-custom-1-3840"
    edition           = "ENTERPRISE"
    availability_type = "ZONAL"
    disk_autoresize   = true
    user_labels       = local.labels

    ip_configuration {
      ipv4_enabled    = false
      private_network = google_compute_network.this.id
      ssl_mode        = "ENCRYPTED_ONLY"
    }

    backup_configuration {
      enabled                        = true
      point_in_time_recovery_enabled = true
      start_time                     = "03:00"
    }

    database_flags {
      name  = "log_checkpoints"
      value = "on"
    }
    database_flags {
      name  = "log_connections"
      value = "on"
    }
    database_flags {
      name  = "log_disconnections"
      value = "on"
    }
    database_flags {
      name  = "log_lock_waits"
      value = "on"
    }
    database_flags {
      name  = "log_min_messages"
      value = "error"
    }
    database_flags {
      name  = "log_temp_files"
      value = "0"
    }
    database_flags {
      name  = "log_min_duration_statement"
      value = "-1"
    }
    database_flags {
      name  = "log_min_error_statement"
      value = "error"
    }
    database_flags {
      name  = "log_hostname"
      value = "on"
    }
    database_flags {
      name  = "log_statement"
      value = "ddl"
    }
    database_flags {
      name  = "cloudsql.enable_pgaudit"
      value = "on"
    }
  }

  depends_on = [google_service_networking_connection.database]
}

resource "google_sql_database" "this" {
  count = local.managed_database ? 1 : 0

  name     = local.database_name
  instance = google_sql_database_instance.this[0].name
}

resource "google_sql_user" "this" {
  count = local.managed_database ? 1 : 0

  name     = local.database_user
  instance = google_sql_database_instance.this[0].name
  password = terraform_data.database_password[0].output
}

resource "google_secret_manager_secret" "database" {
  count = local.managed_database ? 1 : 0

  secret_id = local.secret_id
  labels    = local.labels

  replication {
    auto {}
  }
}

resource "google_secret_manager_secret_version" "database" {
  count = local.managed_database ? 1 : 0

  secret      = google_secret_manager_secret.database[0].id
  secret_data = "postgresql://${google_sql_user.this[0].name}:${urlencode(terraform_data.database_password[0].output)}@${google_sql_database_instance.this[0].private_ip_address}:${local.database_port}/${google_sql_database.this[0].name}?sslmode=require"
}

resource "google_secret_manager_secret_iam_member" "app" {
  count = local.managed_database ? 1 : 0

  project   = local.project
  secret_id = google_secret_manager_secret.database[0].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.app.member
}

# --- the Workers' token (app = "node") -----------------------------------------------------------

# Created empty: the Node mints the token at its first start and adds it as a version; each
# Worker reads it as its own service account. Nothing of it passes through metadata or state.
resource "google_secret_manager_secret" "worker_token" {
  count = local.node ? 1 : 0

  secret_id = "${var.name}-worker-token"
  labels    = local.labels

  replication {
    auto {}
  }
}

# Adding versions is all the Node needs to publish; it reads the secret back to tell whether the
# published token is still live. Bound on this one secret, not the project.
resource "google_secret_manager_secret_iam_member" "worker_token_publish" {
  count = local.node ? 1 : 0

  project   = local.project
  secret_id = google_secret_manager_secret.worker_token[0].secret_id
  role      = "roles/secretmanager.secretVersionAdder"
  member    = google_service_account.app.member
}

resource "google_secret_manager_secret_iam_member" "worker_token_app" {
  count = local.node ? 1 : 0

  project   = local.project
  secret_id = google_secret_manager_secret.worker_token[0].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.app.member
}

resource "google_secret_manager_secret_iam_member" "worker_token_workers" {
  count = local.node ? 1 : 0

  project   = local.project
  secret_id = google_secret_manager_secret.worker_token[0].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.worker[0].member
}

# --- Worker group (app = "node"; a Network has no Workers) ---------------------------------------

resource "google_compute_instance_template" "worker" {
  count = local.node ? 1 : 0

  name_prefix  = "${var.name}-worker-"
  machine_type = var.worker_instance_type
  tags         = [local.worker_tag]
  labels       = local.labels

  disk {
    source_image = local.image
    boot         = true
    auto_delete  = true
    disk_size_gb = 20
    disk_type    = "pd-balanced"
  }

  # No access_config: Workers have no public address and leave through Cloud NAT.
  network_interface {
    subnetwork = google_compute_subnetwork.this.id
  }

  metadata = {
    "block-project-ssh-keys" = true
    "ssh-keys"               = local.ssh_keys
    "startup-script"         = local.worker_user_data
  }

  service_account {
    email  = google_service_account.worker[0].email
    scopes = ["cloud-platform"]
  }

  shielded_instance_config {
    enable_secure_boot          = true
    enable_vtpm                 = true
    enable_integrity_monitoring = true
  }

  lifecycle {
    create_before_destroy = true
  }
}

# No autoscaler resource: the Node resizes the group from its queue depth, so Terraform sets the
# size once (workers_min) and then leaves target_size alone.
resource "google_compute_region_instance_group_manager" "worker" {
  count = local.node ? 1 : 0

  name               = local.worker_group_name
  region             = var.region
  base_instance_name = "${var.name}-worker"
  target_size        = var.workers_min
  wait_for_instances = false

  version {
    name              = "worker"
    instance_template = google_compute_instance_template.worker[0].id
  }

  lifecycle {
    ignore_changes = [target_size]
  }

  # Workers read their token at boot: let them find their permission in place.
  depends_on = [google_secret_manager_secret_iam_member.worker_token_workers]
}
