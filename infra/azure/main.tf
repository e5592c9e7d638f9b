# PyGrid on Azure: a resource group with a VNet, the app VM, a private Blob container, an optional
# PostgreSQL flexible server whose URL lives only in Key Vault, and the Worker group as a VM scale
# set. The azurerm provider (subscription, credentials, features) comes from the root module the
# CLI renders.

data "azurerm_client_config" "this" {}

locals {
  node             = var.app == "node"
  managed_database = var.database == "managed"
  # Not "pygrid": that is the unprivileged system user the startup script runs the server as.
  admin_username = "gridadmin"
  database_name  = "pygrid"
  database_user  = "pygrid"
  database_port  = 5432

  tags = merge(var.tags, {
    "pygrid-deployment" = var.name
    "pygrid-app"        = var.app
    "pygrid-version"    = var.pygrid_version
  })

  # Storage account, Key Vault and PostgreSQL names are global: a hash of subscription and name
  # keeps two subscriptions' "alice" apart without a random provider.
  suffix               = substr(sha1("${data.azurerm_client_config.this.subscription_id}/${var.name}"), 0, 8)
  compact_name         = replace(var.name, "-", "")
  storage_account_name = "${substr(local.compact_name, 0, 16)}${local.suffix}"
  key_vault_name       = "${substr(local.compact_name, 0, 12)}-kv-${local.suffix}"
  token_vault_name     = "${substr(local.compact_name, 0, 12)}-wt-${local.suffix}"
  database_server_name = "${var.name}-pg-${local.suffix}"
  container_name       = "blobs"
  secret_name          = "database-url"
  token_secret_name    = "worker-token"

  address_space   = "10.30.0.0/16"
  app_prefix      = "10.30.1.0/24"
  database_prefix = "10.30.2.0/24"

  # A fixed private address: the Workers' Node URL survives a replaced app VM.
  app_private_ip = cidrhost(local.app_prefix, 10)
  node_url       = "http://${local.app_private_ip}:${var.app_port}"

  worker_group_name = "${var.name}-workers"
  worker_group_id   = "${azurerm_resource_group.this.id}/providers/Microsoft.Compute/virtualMachineScaleSets/${local.worker_group_name}"
  container_url     = "${azurerm_storage_account.this.primary_blob_endpoint}${local.container_name}"
  # The secret the Node publishes its Workers' token in (pygrid.providers.worker_secret): its
  # versionless URL in the token's own vault.
  worker_token_secret = local.node ? "${azurerm_key_vault.worker_token[0].vault_uri}secrets/${local.token_secret_name}" : ""

  # Placeholders the startup scripts may use (the same set on every cloud). None is a secret: the
  # app reads the database URL from Key Vault (__PYGRID_DATABASE_SECRET__, the secret's versionless
  # URL) as its managed identity, and the Workers their token (__PYGRID_WORKER_TOKEN_SECRET__) as
  # theirs. The bucket is ACCOUNT/CONTAINER (the app's blob store is az://ACCOUNT/CONTAINER/...);
  # the worker group the VMSS id; __PYGRID_CLIENT_ID__ the client id of the VM's user-assigned
  # identity, which the Azure SDKs need (AZURE_CLIENT_ID) to ask the metadata service for it.
  app_user_data = replace(replace(replace(replace(replace(replace(replace(replace(replace(replace(
    var.app_user_data,
    "__PYGRID_VERSION__", var.pygrid_version),
    "__PYGRID_REGION__", var.region),
    "__PYGRID_BUCKET__", "${azurerm_storage_account.this.name}/${local.container_name}"),
    "__PYGRID_WORKER_GROUP__", local.node ? local.worker_group_id : ""),
    "__PYGRID_WORKER_TOKEN_SECRET__", local.worker_token_secret),
    "__PYGRID_CLIENT_ID__", azurerm_user_assigned_identity.app.client_id),
    "__PYGRID_DATABASE_HOST__", local.managed_database ? azurerm_postgresql_flexible_server.this[0].fqdn : ""),
    "__PYGRID_DATABASE_PORT__", local.managed_database ? tostring(local.database_port) : ""),
    "__PYGRID_DATABASE_NAME__", local.managed_database ? local.database_name : ""),
    "__PYGRID_DATABASE_SECRET__", local.managed_database ? azurerm_key_vault_secret.database[0].versionless_id : "",
  )

  worker_user_data = replace(replace(replace(replace(replace(
    var.worker_user_data,
    "__PYGRID_VERSION__", var.pygrid_version),
    "__PYGRID_REGION__", var.region),
    "__PYGRID_NODE_URL__", local.node_url),
    "__PYGRID_WORKER_TOKEN_SECRET__", local.worker_token_secret),
    "__PYGRID_CLIENT_ID__", local.node ? azurerm_user_assigned_identity.worker[0].client_id : "",
  )

  image_reference = var.image_id == null ? [{
    publisher = "Debian"
    offer     = "debian-12"
    sku       = "12-gen2"
    version   = "latest"
  }] : []
}

resource "azurerm_resource_group" "this" {
  name     = var.name
  location = var.region
  tags     = local.tags

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

# --- network -------------------------------------------------------------------------------------

resource "azurerm_virtual_network" "this" {
  name                = var.name
  resource_group_name = azurerm_resource_group.this.name
  location            = azurerm_resource_group.this.location
  address_space       = [local.address_space]
  tags                = local.tags
}

resource "azurerm_subnet" "this" {
  name                 = "${var.name}-app"
  resource_group_name  = azurerm_resource_group.this.name
  virtual_network_name = azurerm_virtual_network.this.name
  address_prefixes     = [local.app_prefix]
}

# The NSG's default rules deny inbound internet traffic and allow traffic inside the VNet (the
# Workers reach the Node); these rules are the only ways in from outside.
resource "azurerm_network_security_group" "this" {
  name                = var.name
  resource_group_name = azurerm_resource_group.this.name
  location            = azurerm_resource_group.this.location
  tags                = local.tags
}

resource "azurerm_network_security_rule" "app" {
  name                        = "app"
  resource_group_name         = azurerm_resource_group.this.name
  network_security_group_name = azurerm_network_security_group.this.name
  priority                    = 100
  direction                   = "Inbound"
  access                      = "Allow"
  protocol                    = "Tcp"
  source_port_range           = "*"
  destination_port_range      = tostring(var.app_port)
  source_address_prefixes     = var.app_cidrs
  destination_address_prefix  = local.app_private_ip
}

resource "azurerm_network_security_rule" "ssh" {
  count = length(var.allowed_cidrs) > 0 ? 1 : 0

  name                        = "ssh"
  resource_group_name         = azurerm_resource_group.this.name
  network_security_group_name = azurerm_network_security_group.this.name
  priority                    = 110
  direction                   = "Inbound"
  access                      = "Allow"
  protocol                    = "Tcp"
  source_port_range           = "*"
  destination_port_range      = "22"
  source_address_prefixes     = var.allowed_cidrs
  destination_address_prefix  = "VirtualNetwork"
}

resource "azurerm_subnet_network_security_group_association" "this" {
  subnet_id                 = azurerm_subnet.this.id
  network_security_group_id = azurerm_network_security_group.this.id
}

# Workers have no public address: the NAT gateway lets them reach PyPI to install pygrid.
resource "azurerm_public_ip" "nat" {
  count = local.node ? 1 : 0

  name                = "${var.name}-nat"
  resource_group_name = azurerm_resource_group.this.name
  location            = azurerm_resource_group.this.location
  allocation_method   = "Static"
  sku                 = "Standard"
  tags                = local.tags
}

resource "azurerm_nat_gateway" "this" {
  count = local.node ? 1 : 0

  name                    = var.name
  resource_group_name     = azurerm_resource_group.this.name
  location                = azurerm_resource_group.this.location
  sku_name                = "Standard"
  idle_timeout_in_minutes = 10
  tags                    = local.tags
}

resource "azurerm_nat_gateway_public_ip_association" "this" {
  count = local.node ? 1 : 0

  nat_gateway_id       = azurerm_nat_gateway.this[0].id
  public_ip_address_id = azurerm_public_ip.nat[0].id
}

resource "azurerm_subnet_nat_gateway_association" "this" {
  count = local.node ? 1 : 0

  subnet_id      = azurerm_subnet.this.id
  nat_gateway_id = azurerm_nat_gateway.this[0].id
}

resource "azurerm_public_ip" "this" {
  name                = "${var.name}-app"
  resource_group_name = azurerm_resource_group.this.name
  location            = azurerm_resource_group.this.location
  allocation_method   = "Static"
  sku                 = "Standard"
  tags                = local.tags
}

resource "azurerm_network_interface" "this" {
  #checkov:skip=CKV_AZURE_119:The app VM serves PyGrid on its public address (app_url); the NSG opens only app_port (and SSH from allowed_cidrs).
  name                = "${var.name}-app"
  resource_group_name = azurerm_resource_group.this.name
  location            = azurerm_resource_group.this.location
  tags                = local.tags

  ip_configuration {
    name                          = "primary"
    subnet_id                     = azurerm_subnet.this.id
    private_ip_address_allocation = "Static"
    private_ip_address            = local.app_private_ip
    public_ip_address_id          = azurerm_public_ip.this.id
  }
}

# --- identity ------------------------------------------------------------------------------------

# User-assigned, so its principal exists before the VM and the role assignments need no cycle.
# The VMs name it to the SDKs by its client id (AZURE_CLIENT_ID in their environment files).
resource "azurerm_user_assigned_identity" "app" {
  name                = "${var.name}-app"
  resource_group_name = azurerm_resource_group.this.name
  location            = azurerm_resource_group.this.location
  tags                = local.tags
}

# The Workers' identity: Get on the worker token's vault, nothing else.
resource "azurerm_user_assigned_identity" "worker" {
  count = local.node ? 1 : 0

  name                = "${var.name}-worker"
  resource_group_name = azurerm_resource_group.this.name
  location            = azurerm_resource_group.this.location
  tags                = local.tags
}

# --- blob store ----------------------------------------------------------------------------------

resource "azurerm_storage_account" "this" {
  #checkov:skip=CKV_AZURE_33:No queue is used; queue logging is data-plane configuration, which the provider is told not to use (data_plane_available = false).
  #checkov:skip=CKV_AZURE_43:The name is the deployment name without hyphens (16 characters at most) plus 8 hex digits of a hash: valid by construction; checkov cannot evaluate the subscription id in the hash.
  #checkov:skip=CKV2_AZURE_1:Encrypted at rest (and at the infrastructure layer) with Microsoft-managed keys; a customer-managed key would add a Key Vault key to every deployment.
  name                              = local.storage_account_name
  resource_group_name               = azurerm_resource_group.this.name
  location                          = azurerm_resource_group.this.location
  account_kind                      = "StorageV2"
  account_tier                      = "Standard"
  account_replication_type          = "GRS"
  https_traffic_only_enabled        = true
  min_tls_version                   = "TLS1_2"
  allow_nested_items_to_be_public   = false
  shared_access_key_enabled         = false
  public_network_access_enabled     = false
  default_to_oauth_authentication   = true
  infrastructure_encryption_enabled = true
  tags                              = local.tags

  blob_properties {
    versioning_enabled = true

    delete_retention_policy {
      days = 7
    }

    container_delete_retention_policy {
      days = 7
    }
  }

  # Reached only through the private endpoint below.
  network_rules {
    default_action = "Deny"
    bypass         = ["AzureServices"]
  }

  sas_policy {
    expiration_period = "01.00:00:00"
  }
}

# The VMs reach blobs over a private endpoint in their subnet; the private DNS zone makes the
# account's usual blob host name resolve to it inside the VNet.
resource "azurerm_private_dns_zone" "blob" {
  name                = "privatelink.blob.core.windows.net"
  resource_group_name = azurerm_resource_group.this.name
  tags                = local.tags
}

resource "azurerm_private_dns_zone_virtual_network_link" "blob" {
  name                  = "${var.name}-blob"
  resource_group_name   = azurerm_resource_group.this.name
  private_dns_zone_name = azurerm_private_dns_zone.blob.name
  virtual_network_id    = azurerm_virtual_network.this.id
  registration_enabled  = false
  tags                  = local.tags
}

resource "azurerm_private_endpoint" "blob" {
  name                = "${var.name}-blob"
  resource_group_name = azurerm_resource_group.this.name
  location            = azurerm_resource_group.this.location
  subnet_id           = azurerm_subnet.this.id
  tags                = local.tags

  private_service_connection {
    name                           = "${var.name}-blob"
    private_connection_resource_id = azurerm_storage_account.this.id
    subresource_names              = ["blob"]
    is_manual_connection           = false
  }

  private_dns_zone_group {
    name                 = "blob"
    private_dns_zone_ids = [azurerm_private_dns_zone.blob.id]
  }
}

# storage_account_id: created through Azure Resource Manager, so Terraform needs neither a shared
# key nor a network path to the private blob endpoint.
resource "azurerm_storage_container" "this" {
  #checkov:skip=CKV2_AZURE_21:Blob read logging needs a Log Analytics workspace or a second account per deployment.
  name                  = local.container_name
  storage_account_id    = azurerm_storage_account.this.id
  container_access_type = "private"
}

# Scoped to the one container, not the account.
resource "azurerm_role_assignment" "blobs" {
  scope                = "${azurerm_storage_account.this.id}/blobServices/default/containers/${azurerm_storage_container.this.name}"
  role_definition_name = "Storage Blob Data Contributor"
  principal_id         = azurerm_user_assigned_identity.app.principal_id
  principal_type       = "ServicePrincipal"
}

# --- the app VM ----------------------------------------------------------------------------------

resource "azurerm_linux_virtual_machine" "this" {
  name                            = "${var.name}-app"
  resource_group_name             = azurerm_resource_group.this.name
  location                        = azurerm_resource_group.this.location
  size                            = var.instance_type
  admin_username                  = local.admin_username
  disable_password_authentication = true
  allow_extension_operations      = false
  network_interface_ids           = [azurerm_network_interface.this.id]
  custom_data                     = base64encode(local.app_user_data)
  source_image_id                 = var.image_id
  tags                            = local.tags

  admin_ssh_key {
    username   = local.admin_username
    public_key = var.ssh_public_key
  }

  dynamic "source_image_reference" {
    for_each = local.image_reference
    content {
      publisher = source_image_reference.value.publisher
      offer     = source_image_reference.value.offer
      sku       = source_image_reference.value.sku
      version   = source_image_reference.value.version
    }
  }

  os_disk {
    caching              = "ReadWrite"
    storage_account_type = "StandardSSD_LRS"
    disk_size_gb         = 30
  }

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.app.id]
  }

  # Managed boot diagnostics: serial console logs without a storage account of ours.
  boot_diagnostics {}

  lifecycle {
    # custom_data forces a new VM and cloud-init runs it at first boot only: a new startup script
    # must not replace the VM, whose disk holds the embedded SQLite database (as on AWS).
    ignore_changes = [custom_data]
  }

  # The identity can reach and read its container (and reach the token's vault) before the
  # startup script first runs.
  depends_on = [
    azurerm_role_assignment.blobs,
    azurerm_private_endpoint.blob,
    azurerm_private_dns_zone_virtual_network_link.blob,
    azurerm_private_endpoint.worker_token,
    azurerm_private_dns_zone_virtual_network_link.vault,
  ]
}

# --- managed PostgreSQL (database = "managed") ---------------------------------------------------

# No random provider offline: Terraform's uuid() (crypto/rand, 122 random bits) is drawn once and
# kept by ignore_changes. It lives in state and Key Vault only, never in custom_data or outputs.
resource "terraform_data" "database_password" {
  count = local.managed_database ? 1 : 0

  input = sensitive(uuid())

  lifecycle {
    ignore_changes = [input]
  }
}

resource "azurerm_subnet" "database" {
  count = local.managed_database ? 1 : 0

  name                 = "${var.name}-database"
  resource_group_name  = azurerm_resource_group.this.name
  virtual_network_name = azurerm_virtual_network.this.name
  address_prefixes     = [local.database_prefix]

  delegation {
    name = "postgresql"
    service_delegation {
      name    = "Microsoft.DBforPostgreSQL/flexibleServers"
      actions = ["Microsoft.Network/virtualNetworks/subnets/join/action"]
    }
  }
}

resource "azurerm_subnet_network_security_group_association" "database" {
  count = local.managed_database ? 1 : 0

  subnet_id                 = azurerm_subnet.database[0].id
  network_security_group_id = azurerm_network_security_group.this.id
}

resource "azurerm_private_dns_zone" "database" {
  count = local.managed_database ? 1 : 0

  name                = "${var.name}.private.postgres.database.azure.com"
  resource_group_name = azurerm_resource_group.this.name
  tags                = local.tags
}

resource "azurerm_private_dns_zone_virtual_network_link" "database" {
  count = local.managed_database ? 1 : 0

  name                  = "${var.name}-database"
  resource_group_name   = azurerm_resource_group.this.name
  private_dns_zone_name = azurerm_private_dns_zone.database[0].name
  virtual_network_id    = azurerm_virtual_network.this.id
  registration_enabled  = false
  tags                  = local.tags
}

# VNet-integrated: reachable only from the VNet, TLS required (require_secure_transport is on by
# default on flexible servers).
resource "azurerm_postgresql_flexible_server" "this" {
  #checkov:skip=CKV2_AZURE_57:VNet-integrated (delegated subnet, no public access); Azure offers no private endpoint for VNet-integrated servers.
  count = local.managed_database ? 1 : 0

  name                          = local.database_server_name
  resource_group_name           = azurerm_resource_group.this.name
  location                      = azurerm_resource_group.this.location
  version                       = "16"
  sku_name                      = "B_Standard_B1ms"
  storage_mb                    = 32768
  backup_retention_days         = 7
  geo_redundant_backup_enabled  = true
  delegated_subnet_id           = azurerm_subnet.database[0].id
  private_dns_zone_id           = azurerm_private_dns_zone.database[0].id
  public_network_access_enabled = false
  administrator_login           = local.database_user
  administrator_password        = terraform_data.database_password[0].output
  tags                          = local.tags

  lifecycle {
    # Azure picks the zone when none is given; do not fight it on the next plan.
    ignore_changes = [zone]
  }

  depends_on = [azurerm_private_dns_zone_virtual_network_link.database]
}

resource "azurerm_postgresql_flexible_server_database" "this" {
  count = local.managed_database ? 1 : 0

  name      = local.database_name
  server_id = azurerm_postgresql_flexible_server.this[0].id
  charset   = "UTF8"
  collation = "en_US.utf8"
}

# Access policies, not Azure RBAC: they apply at once, where a fresh role assignment can take
# minutes to reach the data plane and fail the first apply. The vault holds this one secret, so
# "get secrets" for the VM identity is exactly read access to the database URL.
resource "azurerm_key_vault" "this" {
  #checkov:skip=CKV_AZURE_109:The deploying machine writes the secret over the public endpoint; access policies (deployer and app VM only) gate it.
  #checkov:skip=CKV_AZURE_189:Public network access stays on for the deploying machine; access policies gate every request.
  #checkov:skip=CKV2_AZURE_32:A private endpoint would also lock out the deploying machine that writes the secret.
  count = local.managed_database ? 1 : 0

  name                       = local.key_vault_name
  resource_group_name        = azurerm_resource_group.this.name
  location                   = azurerm_resource_group.this.location
  tenant_id                  = data.azurerm_client_config.this.tenant_id
  sku_name                   = "standard"
  soft_delete_retention_days = 7
  purge_protection_enabled   = true
  tags                       = local.tags

  network_acls {
    default_action = "Allow"
    bypass         = "AzureServices"
  }

  access_policy {
    tenant_id          = data.azurerm_client_config.this.tenant_id
    object_id          = data.azurerm_client_config.this.object_id
    secret_permissions = ["Get", "List", "Set", "Delete", "Recover"]
  }

  access_policy {
    tenant_id          = data.azurerm_client_config.this.tenant_id
    object_id          = azurerm_user_assigned_identity.app.principal_id
    secret_permissions = ["Get"]
  }
}

resource "azurerm_key_vault_secret" "database" {
  #checkov:skip=CKV_AZURE_41:The URL is rotated by redeploying; an expiry date would stop the Node at its next restart.
  count = local.managed_database ? 1 : 0

  name         = local.secret_name
  key_vault_id = azurerm_key_vault.this[0].id
  content_type = "text/uri-list"
  value        = "postgresql://${azurerm_postgresql_flexible_server.this[0].administrator_login}:${urlencode(terraform_data.database_password[0].output)}@${azurerm_postgresql_flexible_server.this[0].fqdn}:${local.database_port}/${azurerm_postgresql_flexible_server_database.this[0].name}?sslmode=require"
  tags         = local.tags
}

# --- the Workers' token (app = "node") -----------------------------------------------------------

# A vault of its own, holding the one secret the Node writes (Terraform cannot create an empty Key
# Vault secret: the Node's first write creates it) and the Workers read. Access policies apply at
# once and, the vault holding nothing else, are per secret: the app VM Get and Set (it reads the
# token back to tell whether it is still live), the Workers Get. Only the VMs use it, so it is
# reached through a private endpoint alone; the deploying machine never touches its data plane.
resource "azurerm_key_vault" "worker_token" {
  count = local.node ? 1 : 0

  name                          = local.token_vault_name
  resource_group_name           = azurerm_resource_group.this.name
  location                      = azurerm_resource_group.this.location
  tenant_id                     = data.azurerm_client_config.this.tenant_id
  sku_name                      = "standard"
  soft_delete_retention_days    = 7
  purge_protection_enabled      = true
  public_network_access_enabled = false
  tags                          = local.tags

  network_acls {
    default_action = "Deny"
    bypass         = "AzureServices"
  }

  access_policy {
    tenant_id          = data.azurerm_client_config.this.tenant_id
    object_id          = azurerm_user_assigned_identity.app.principal_id
    secret_permissions = ["Get", "Set"]
  }

  access_policy {
    tenant_id          = data.azurerm_client_config.this.tenant_id
    object_id          = azurerm_user_assigned_identity.worker[0].principal_id
    secret_permissions = ["Get"]
  }
}

# The VMs reach the vault over a private endpoint in their subnet; the private DNS zone makes its
# usual host name resolve to it inside the VNet.
resource "azurerm_private_dns_zone" "vault" {
  count = local.node ? 1 : 0

  name                = "privatelink.vaultcore.azure.net"
  resource_group_name = azurerm_resource_group.this.name
  tags                = local.tags
}

resource "azurerm_private_dns_zone_virtual_network_link" "vault" {
  count = local.node ? 1 : 0

  name                  = "${var.name}-vault"
  resource_group_name   = azurerm_resource_group.this.name
  private_dns_zone_name = azurerm_private_dns_zone.vault[0].name
  virtual_network_id    = azurerm_virtual_network.this.id
  registration_enabled  = false
  tags                  = local.tags
}

resource "azurerm_private_endpoint" "worker_token" {
  count = local.node ? 1 : 0

  name                = "${var.name}-worker-token"
  resource_group_name = azurerm_resource_group.this.name
  location            = azurerm_resource_group.this.location
  subnet_id           = azurerm_subnet.this.id
  tags                = local.tags

  private_service_connection {
    name                           = "${var.name}-worker-token"
    private_connection_resource_id = azurerm_key_vault.worker_token[0].id
    subresource_names              = ["vault"]
    is_manual_connection           = false
  }

  private_dns_zone_group {
    name                 = "vault"
    private_dns_zone_ids = [azurerm_private_dns_zone.vault[0].id]
  }
}

# --- Worker group (app = "node"; a Network has no Workers) ---------------------------------------

# No autoscale setting: the Node resizes the scale set from its queue depth, so Terraform sets the
# capacity once (workers_min) and then leaves instances alone.
resource "azurerm_linux_virtual_machine_scale_set" "worker" {
  #checkov:skip=CKV_AZURE_97:Encryption at host needs the EncryptionAtHost feature registered on the subscription; disks are encrypted at rest by the platform.
  count = local.node ? 1 : 0

  name                            = local.worker_group_name
  resource_group_name             = azurerm_resource_group.this.name
  location                        = azurerm_resource_group.this.location
  sku                             = var.worker_instance_type
  instances                       = var.workers_min
  admin_username                  = local.admin_username
  disable_password_authentication = true
  extension_operations_enabled    = false
  overprovision                   = false
  upgrade_mode                    = "Manual"
  custom_data                     = base64encode(local.worker_user_data)
  source_image_id                 = var.image_id
  tags                            = local.tags

  admin_ssh_key {
    username   = local.admin_username
    public_key = var.ssh_public_key
  }

  dynamic "source_image_reference" {
    for_each = local.image_reference
    content {
      publisher = source_image_reference.value.publisher
      offer     = source_image_reference.value.offer
      sku       = source_image_reference.value.sku
      version   = source_image_reference.value.version
    }
  }

  os_disk {
    caching              = "ReadWrite"
    storage_account_type = "StandardSSD_LRS"
  }

  # No public address: Workers leave through the NAT gateway and reach the Node inside the VNet.
  network_interface {
    name    = "worker"
    primary = true

    ip_configuration {
      name      = "primary"
      primary   = true
      subnet_id = azurerm_subnet.this.id
    }
  }

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.worker[0].id]
  }

  boot_diagnostics {}

  lifecycle {
    ignore_changes = [instances]
  }

  # Workers read their token at boot: let them reach the vault first.
  depends_on = [
    azurerm_subnet_nat_gateway_association.this,
    azurerm_private_endpoint.worker_token,
    azurerm_private_dns_zone_virtual_network_link.vault,
  ]
}

# The Node's autoscaler sets this scale set's capacity: Virtual Machine Contributor on it alone.
resource "azurerm_role_assignment" "resize_workers" {
  count = local.node ? 1 : 0

  scope                = azurerm_linux_virtual_machine_scale_set.worker[0].id
  role_definition_name = "Virtual Machine Contributor"
  principal_id         = azurerm_user_assigned_identity.app.principal_id
  principal_type       = "ServicePrincipal"
}

# A scale-set update that carries its network profile makes Azure check "subnets/join/action" on
# the subnet it names (linked authorization). The same built-in role scoped to the one subnet
# grants that join (and read); no VM or scale set lives under a subnet's scope.
resource "azurerm_role_assignment" "join_worker_subnet" {
  count = local.node ? 1 : 0

  scope                = azurerm_subnet.this.id
  role_definition_name = "Virtual Machine Contributor"
  principal_id         = azurerm_user_assigned_identity.app.principal_id
  principal_type       = "ServicePrincipal"
}
