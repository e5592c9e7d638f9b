# PyGrid on AWS: VPC, one app VM (Node or Network), a private encrypted S3 bucket for blobs, an
# optional RDS PostgreSQL whose password only RDS/Secrets Manager knows, and (for a Node) the Worker
# group as a launch template + ASG the Node resizes. Inputs and outputs: infra/README.md.
# The provider block (region, credentials, endpoints) is the caller's.

data "aws_region" "current" {}

data "aws_partition" "current" {}

data "aws_caller_identity" "current" {}

# A closed list of zone names: Local and Wavelength Zones (and zones AWS adds later) never appear.
data "aws_availability_zones" "available" {
  state = "available"

  filter {
    name   = "zone-name"
    values = [for letter in ["a", "b", "c", "d", "e", "f"] : "${var.region}${letter}"]
  }
}

# The given image, or the newest official Debian 12 image (owner = the Debian project's account),
# looked up either way for its root device name.
data "aws_ami" "this" {
  most_recent = true
  owners      = var.image_id == null ? ["136693071363"] : null

  filter {
    name   = var.image_id == null ? "name" : "image-id"
    values = [var.image_id == null ? "debian-12-amd64-*" : var.image_id]
  }
}

locals {
  managed = var.database == "managed"
  node    = var.app == "node"

  tags = merge(var.tags, {
    "pygrid:deployment" = var.name
    "pygrid:app"        = var.app
    "pygrid:version"    = var.pygrid_version
  })

  vpc_cidr = "10.80.0.0/16"
  # Two zones: the ASG spreads over both and an RDS subnet group needs two.
  azs = slice(sort(data.aws_availability_zones.available.names), 0, 2)

  # Known before the ASG exists, so the app's user data and IAM policy can name it without a cycle.
  worker_group_name = "${var.name}-workers"
  worker_group_arn  = "arn:${data.aws_partition.current.partition}:autoscaling:${var.region}:${data.aws_caller_identity.current.account_id}:autoScalingGroup:*:autoScalingGroupName/${local.worker_group_name}"

  database_port = 5432
  database_name = "pygrid"
  database_user = "pygrid"

  # The secret the Node publishes its Workers' token in (pygrid.providers.worker_secret).
  worker_token_secret = local.node ? aws_secretsmanager_secret.worker_token[0].arn : ""

  # Placeholders the startup scripts may use. None is a secret: the app reads the database
  # password from Secrets Manager (__PYGRID_DATABASE_SECRET__) with its instance role, and the
  # Workers their token (__PYGRID_WORKER_TOKEN_SECRET__) with theirs. __PYGRID_CLIENT_ID__ is
  # Azure's user-assigned identity: empty here, where instance roles need no client id.
  app_user_data = replace(replace(replace(replace(replace(replace(replace(replace(replace(replace(
    var.app_user_data,
    "__PYGRID_VERSION__", var.pygrid_version),
    "__PYGRID_REGION__", var.region),
    "__PYGRID_BUCKET__", aws_s3_bucket.this.bucket),
    "__PYGRID_WORKER_GROUP__", local.node ? local.worker_group_name : ""),
    "__PYGRID_WORKER_TOKEN_SECRET__", local.worker_token_secret),
    "__PYGRID_CLIENT_ID__", ""),
    "__PYGRID_DATABASE_HOST__", local.managed ? aws_db_instance.this[0].address : ""),
    "__PYGRID_DATABASE_PORT__", local.managed ? tostring(local.database_port) : ""),
    "__PYGRID_DATABASE_NAME__", local.managed ? local.database_name : ""),
    "__PYGRID_DATABASE_SECRET__", local.managed ? aws_db_instance.this[0].master_user_secret[0].secret_arn : "",
  )

  node_url = "http://${aws_instance.this.private_ip}:${var.app_port}"
  worker_user_data = replace(replace(replace(replace(replace(
    var.worker_user_data,
    "__PYGRID_VERSION__", var.pygrid_version),
    "__PYGRID_REGION__", var.region),
    "__PYGRID_NODE_URL__", local.node_url),
    "__PYGRID_WORKER_TOKEN_SECRET__", local.worker_token_secret),
    "__PYGRID_CLIENT_ID__", "",
  )

  # SSH rules: one per (security group, CIDR); none when allowed_cidrs is empty.
  ssh_groups = merge(
    { app = aws_security_group.app.id },
    local.node ? { workers = aws_security_group.workers[0].id } : {},
  )
  ssh_rules = {
    for pair in setproduct(keys(local.ssh_groups), var.allowed_cidrs) : "${pair[0]} ${pair[1]}" => {
      group = pair[0]
      cidr  = pair[1]
    }
  }
  # Outbound: apt (80) and PyPI / AWS APIs (443). DNS, NTP and IMDS are not filtered by groups.
  internet_egress = { http = 80, https = 443 }
}

################################################################################
# Network
################################################################################

resource "aws_vpc" "this" {
  #checkov:skip=CKV2_AWS_11:VPC flow logs cost per GB and need a log sink; enable them account-wide.
  cidr_block           = local.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = merge(local.tags, { Name = var.name })

  lifecycle {
    precondition {
      condition     = data.aws_region.current.name == var.region
      error_message = "var.region must be the region of the aws provider."
    }
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

resource "aws_default_security_group" "this" {
  # No rules: nothing may use the VPC's default group.
  vpc_id = aws_vpc.this.id

  tags = merge(local.tags, { Name = "${var.name}-default-closed" })
}

resource "aws_internet_gateway" "this" {
  vpc_id = aws_vpc.this.id

  tags = merge(local.tags, { Name = var.name })
}

# The app VM and the Workers: they fetch apt packages and pygrid from PyPI, and the app is public.
resource "aws_subnet" "public" {
  count = 2

  vpc_id            = aws_vpc.this.id
  cidr_block        = cidrsubnet(local.vpc_cidr, 8, count.index)
  availability_zone = local.azs[count.index]

  tags = merge(local.tags, { Name = "${var.name}-public-${local.azs[count.index]}" })

  lifecycle {
    # Zones that come and go later must not replace the subnet (and the VM and database in it).
    ignore_changes = [availability_zone]
  }
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.this.id

  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.this.id
  }

  tags = merge(local.tags, { Name = "${var.name}-public" })
}

resource "aws_route_table_association" "public" {
  count = 2

  subnet_id      = aws_subnet.public[count.index].id
  route_table_id = aws_route_table.public.id
}

# The database: no route to the internet (the VPC's main route table is local only).
resource "aws_subnet" "private" {
  count = local.managed ? 2 : 0

  vpc_id            = aws_vpc.this.id
  cidr_block        = cidrsubnet(local.vpc_cidr, 8, 10 + count.index)
  availability_zone = local.azs[count.index]

  tags = merge(local.tags, { Name = "${var.name}-private-${local.azs[count.index]}" })

  lifecycle {
    # Zones that come and go later must not replace the subnet (and the VM and database in it).
    ignore_changes = [availability_zone]
  }
}

################################################################################
# Firewall: only the app port (and SSH from allowed_cidrs)
################################################################################

resource "aws_security_group" "app" {
  name_prefix = "${var.name}-app-"
  description = "PyGrid ${var.app} ${var.name}: app port in, apt/PyPI/AWS APIs out"
  vpc_id      = aws_vpc.this.id

  tags = merge(local.tags, { Name = "${var.name}-app" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "app" {
  for_each = toset(var.app_cidrs)

  security_group_id = aws_security_group.app.id
  description       = "PyGrid ${var.app} port from ${each.value}"
  ip_protocol       = "tcp"
  from_port         = var.app_port
  to_port           = var.app_port
  cidr_ipv4         = strcontains(each.value, ":") ? null : each.value
  cidr_ipv6         = strcontains(each.value, ":") ? each.value : null

  tags = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "app_from_workers" {
  count = local.node ? 1 : 0

  security_group_id            = aws_security_group.app.id
  description                  = "PyGrid Node port from its Workers"
  ip_protocol                  = "tcp"
  from_port                    = var.app_port
  to_port                      = var.app_port
  referenced_security_group_id = aws_security_group.workers[0].id

  tags = local.tags
}

resource "aws_vpc_security_group_egress_rule" "app" {
  for_each = local.internet_egress

  security_group_id = aws_security_group.app.id
  description       = "${upper(each.key)} out (apt, PyPI, AWS APIs)"
  ip_protocol       = "tcp"
  from_port         = each.value
  to_port           = each.value
  cidr_ipv4         = "0.0.0.0/0"

  tags = local.tags
}

resource "aws_vpc_security_group_egress_rule" "app_to_database" {
  count = local.managed ? 1 : 0

  security_group_id            = aws_security_group.app.id
  description                  = "PostgreSQL to the managed database"
  ip_protocol                  = "tcp"
  from_port                    = local.database_port
  to_port                      = local.database_port
  referenced_security_group_id = aws_security_group.database[0].id

  tags = local.tags
}

resource "aws_security_group" "workers" {
  count = local.node ? 1 : 0

  name_prefix = "${var.name}-workers-"
  description = "PyGrid Workers of ${var.name}: nothing in, the Node and apt/PyPI out"
  vpc_id      = aws_vpc.this.id

  tags = merge(local.tags, { Name = "${var.name}-workers" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_egress_rule" "workers" {
  for_each = local.node ? local.internet_egress : {}

  security_group_id = aws_security_group.workers[0].id
  description       = "${upper(each.key)} out (apt, PyPI)"
  ip_protocol       = "tcp"
  from_port         = each.value
  to_port           = each.value
  cidr_ipv4         = "0.0.0.0/0"

  tags = local.tags
}

resource "aws_vpc_security_group_egress_rule" "workers_to_app" {
  count = local.node ? 1 : 0

  security_group_id            = aws_security_group.workers[0].id
  description                  = "The Node's port"
  ip_protocol                  = "tcp"
  from_port                    = var.app_port
  to_port                      = var.app_port
  referenced_security_group_id = aws_security_group.app.id

  tags = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "ssh" {
  for_each = local.ssh_rules

  security_group_id = local.ssh_groups[each.value.group]
  description       = "SSH from ${each.value.cidr}"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = strcontains(each.value.cidr, ":") ? null : each.value.cidr
  cidr_ipv6         = strcontains(each.value.cidr, ":") ? each.value.cidr : null

  tags = local.tags
}

resource "aws_security_group" "database" {
  count = local.managed ? 1 : 0

  name_prefix = "${var.name}-database-"
  description = "PyGrid ${var.name} database: PostgreSQL from the app VM only"
  vpc_id      = aws_vpc.this.id

  tags = merge(local.tags, { Name = "${var.name}-database" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "database" {
  count = local.managed ? 1 : 0

  security_group_id            = aws_security_group.database[0].id
  description                  = "PostgreSQL from the app VM"
  ip_protocol                  = "tcp"
  from_port                    = local.database_port
  to_port                      = local.database_port
  referenced_security_group_id = aws_security_group.app.id

  tags = local.tags
}

################################################################################
# Blob store: private, versioned, KMS-encrypted S3 bucket
################################################################################

resource "aws_kms_key" "this" {
  description             = "PyGrid ${var.name}: blob store and worker token encryption"
  enable_key_rotation     = true
  deletion_window_in_days = 7
  # The account administers the key; the app role gets use of it through its IAM policy.
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "AccountAdministersKey"
      Effect    = "Allow"
      Principal = { AWS = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root" }
      Action    = "kms:*"
      Resource  = "*"
    }]
  })

  tags = local.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/pygrid-${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

resource "aws_s3_bucket" "this" {
  #checkov:skip=CKV_AWS_18:Access logs need a second bucket per deployment; CloudTrail data events cover audits.
  #checkov:skip=CKV_AWS_144:One region per deployment; versioning guards against deletes, replication would double cost.
  #checkov:skip=CKV2_AWS_62:Nothing consumes bucket events; the Node itself writes every blob.
  bucket_prefix = "${var.name}-"
  # pygrid destroy tears the deployment down, blobs included.
  force_destroy = true

  tags = merge(local.tags, { Name = "${var.name}-blobs" })
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket = aws_s3_bucket.this.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "this" {
  bucket = aws_s3_bucket.this.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.this.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    id     = "tidy"
    status = "Enabled"

    filter {}

    # Old checkpoint versions are a safety net, not an archive.
    noncurrent_version_expiration {
      noncurrent_days = 30
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.this]
}

resource "aws_s3_bucket_policy" "this" {
  bucket = aws_s3_bucket.this.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "DenyInsecureTransport"
      Effect    = "Deny"
      Principal = "*"
      Action    = "s3:*"
      Resource  = [aws_s3_bucket.this.arn, "${aws_s3_bucket.this.arn}/*"]
      Condition = { Bool = { "aws:SecureTransport" = "false" } }
    }]
  })

  depends_on = [aws_s3_bucket_public_access_block.this]
}

################################################################################
# Instance identity: the bucket, the database secret, the Workers' token, the Node's own ASG
################################################################################

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "this" {
  name_prefix        = "${var.name}-"
  description        = "PyGrid ${var.app} ${var.name} app VM"
  assume_role_policy = data.aws_iam_policy_document.assume.json

  tags = local.tags
}

data "aws_iam_policy_document" "this" {
  statement {
    sid       = "ListBlobs"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [aws_s3_bucket.this.arn]
  }

  statement {
    sid = "ReadWriteBlobs"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${aws_s3_bucket.this.arn}/*"]
  }

  statement {
    sid       = "BlobEncryption"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.this.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }

  dynamic "statement" {
    for_each = local.managed ? [1] : []

    content {
      sid       = "ReadDatabaseSecret"
      actions   = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
      resources = [aws_db_instance.this[0].master_user_secret[0].secret_arn]
    }
  }

  dynamic "statement" {
    # The Node mints its Workers' token and writes it here; it reads it back to tell whether the
    # published token is still live. This one secret only.
    for_each = local.node ? [1] : []

    content {
      sid       = "PublishWorkerToken"
      actions   = ["secretsmanager:PutSecretValue", "secretsmanager:GetSecretValue"]
      resources = [aws_secretsmanager_secret.worker_token[0].arn]
    }
  }

  dynamic "statement" {
    for_each = local.node ? [1] : []

    content {
      sid       = "WorkerTokenEncryption"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [aws_kms_key.this.arn]

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["secretsmanager.${var.region}.amazonaws.com"]
      }
    }
  }

  dynamic "statement" {
    for_each = local.node ? [1] : []

    content {
      sid       = "ResizeOwnWorkerGroup"
      actions   = ["autoscaling:SetDesiredCapacity"]
      resources = [local.worker_group_arn]
    }
  }

  dynamic "statement" {
    # Describe calls take no resource-level permissions: "*" is the only possible resource.
    for_each = local.node ? [1] : []

    content {
      sid       = "DescribeWorkerGroups"
      actions   = ["autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeScalingActivities"]
      resources = ["*"]
    }
  }
}

resource "aws_iam_role_policy" "this" {
  name_prefix = "pygrid-"
  role        = aws_iam_role.this.id
  policy      = data.aws_iam_policy_document.this.json
}

resource "aws_iam_instance_profile" "this" {
  name_prefix = "${var.name}-"
  role        = aws_iam_role.this.name

  tags = local.tags
}

################################################################################
# The Workers' token (app = node): a secret the Node writes and the Workers read
################################################################################

# Created empty: the Node mints the token at its first start and puts it here; each Worker reads
# it with its own role (below). Nothing of it passes through user data or Terraform state.
resource "aws_secretsmanager_secret" "worker_token" {
  #checkov:skip=CKV2_AWS_57:The Node rotates this token itself: it mints and writes a new one whenever the stored one is revoked (pygrid worker-token revoke); a rotation Lambda could not mint Node tokens.
  count = local.node ? 1 : 0

  name_prefix = "${var.name}-worker-token-"
  description = "PyGrid ${var.name}: the token the Node's Workers present (written by the Node)"
  kms_key_id  = aws_kms_key.this.arn
  # pygrid destroy removes it at once (the Node mints a new token on the next deploy anyway).
  recovery_window_in_days = 0

  tags = local.tags
}

# The Workers' own role: read that one secret, nothing else (they reach everything else through
# the Node's HTTP API).
resource "aws_iam_role" "worker" {
  count = local.node ? 1 : 0

  name_prefix        = "${var.name}-wkr-"
  description        = "PyGrid Workers of ${var.name}"
  assume_role_policy = data.aws_iam_policy_document.assume.json

  tags = local.tags
}

data "aws_iam_policy_document" "worker" {
  count = local.node ? 1 : 0

  statement {
    sid       = "ReadWorkerToken"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.worker_token[0].arn]
  }

  statement {
    sid       = "WorkerTokenEncryption"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.this.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "worker" {
  count = local.node ? 1 : 0

  name_prefix = "pygrid-"
  role        = aws_iam_role.worker[0].id
  policy      = data.aws_iam_policy_document.worker[0].json
}

resource "aws_iam_instance_profile" "worker" {
  count = local.node ? 1 : 0

  name_prefix = "${var.name}-wkr-"
  role        = aws_iam_role.worker[0].name

  tags = local.tags
}

################################################################################
# Managed PostgreSQL (database = managed): the password lives in Secrets Manager only
################################################################################

resource "aws_db_subnet_group" "this" {
  count = local.managed ? 1 : 0

  name_prefix = "${var.name}-"
  description = "PyGrid ${var.name} database subnets"
  subnet_ids  = aws_subnet.private[*].id

  tags = local.tags
}

resource "aws_db_parameter_group" "this" {
  count = local.managed ? 1 : 0

  name_prefix = "${var.name}-"
  description = "PyGrid ${var.name}: schema changes and slow queries logged"
  family      = "postgres16"

  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }

  parameter {
    name  = "log_statement"
    value = "ddl"
  }

  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }

  tags = local.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_db_instance" "this" {
  #checkov:skip=CKV_AWS_157:Multi-AZ doubles the cost of a small research Node; daily backups are kept 7 days.
  #checkov:skip=CKV_AWS_118:Enhanced monitoring needs an extra IAM role and CloudWatch cost; basic metrics stay on.
  #checkov:skip=CKV_AWS_353:Performance Insights is an opt-in cost; slow queries are logged instead.
  #checkov:skip=CKV_AWS_354:Performance Insights is off (see CKV_AWS_353), so it has nothing to encrypt.
  #checkov:skip=CKV_AWS_293:pygrid destroy must be able to delete the database; a final snapshot is kept instead.
  count = local.managed ? 1 : 0

  identifier_prefix = "${var.name}-"
  engine            = "postgres"
  engine_version    = "16"
  instance_class    = "db.t4g.micro"

  allocated_storage     = 20
  max_allocated_storage = 100
  storage_type          = "gp3"
  storage_encrypted     = true

  db_name  = local.database_name
  username = local.database_user
  # RDS generates the password and keeps (and rotates) it in Secrets Manager.
  manage_master_user_password = true

  db_subnet_group_name   = aws_db_subnet_group.this[0].name
  parameter_group_name   = aws_db_parameter_group.this[0].name
  vpc_security_group_ids = [aws_security_group.database[0].id]
  publicly_accessible    = false
  port                   = local.database_port

  backup_retention_period             = 7
  copy_tags_to_snapshot               = true
  auto_minor_version_upgrade          = true
  iam_database_authentication_enabled = true
  enabled_cloudwatch_logs_exports     = ["postgresql", "upgrade"]

  deletion_protection = false
  # Unique per deployment (the bucket's generated suffix), so a redeploy + destroy cannot collide.
  skip_final_snapshot       = false
  final_snapshot_identifier = "${var.name}-final-${trimprefix(aws_s3_bucket.this.id, "${var.name}-")}"

  tags = merge(local.tags, { Name = "${var.name}-database" })
}

################################################################################
# App VM
################################################################################

resource "aws_key_pair" "this" {
  count = var.ssh_public_key == null ? 0 : 1

  key_name_prefix = "${var.name}-"
  public_key      = var.ssh_public_key

  tags = local.tags
}

resource "aws_instance" "this" {
  #checkov:skip=CKV_AWS_88:The app VM serves the public app_url; its group admits only app_port (and SSH from allowed_cidrs).
  #checkov:skip=CKV_AWS_126:1-minute metrics cost extra per VM; the Node scales Workers on its queue depth, not CloudWatch.
  ami                         = data.aws_ami.this.id
  instance_type               = var.instance_type
  subnet_id                   = aws_subnet.public[0].id
  vpc_security_group_ids      = [aws_security_group.app.id]
  associate_public_ip_address = true
  iam_instance_profile        = aws_iam_instance_profile.this.name
  key_name                    = try(aws_key_pair.this[0].key_name, null)
  monitoring                  = false
  ebs_optimized               = true

  user_data = local.app_user_data

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    encrypted             = true
    volume_type           = "gp3"
    volume_size           = 20
    delete_on_termination = true
    tags                  = merge(local.tags, { Name = "${var.name}-${var.app}" })
  }

  tags = merge(local.tags, { Name = "${var.name}-${var.app}" })

  lifecycle {
    # A newer Debian image must not replace the VM: its disk holds the embedded SQLite database.
    ignore_changes = [ami]
  }

  # The service starts at boot: let it find its permissions and bucket settings in place.
  depends_on = [
    aws_iam_role_policy.this,
    aws_s3_bucket_public_access_block.this,
    aws_s3_bucket_server_side_encryption_configuration.this,
  ]
}

################################################################################
# Worker group (app = node): launch template + ASG the Node resizes
################################################################################

resource "aws_launch_template" "this" {
  #checkov:skip=CKV_AWS_88:Workers need outbound internet (apt, PyPI) without a NAT gateway; their group admits no inbound but SSH from allowed_cidrs.
  count = local.node ? 1 : 0

  name_prefix            = "${var.name}-workers-"
  description            = "PyGrid Workers of ${var.name}"
  image_id               = data.aws_ami.this.id
  instance_type          = var.worker_instance_type
  key_name               = try(aws_key_pair.this[0].key_name, null)
  ebs_optimized          = true
  update_default_version = true

  user_data = base64encode(local.worker_user_data)

  iam_instance_profile {
    arn = aws_iam_instance_profile.worker[0].arn
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  network_interfaces {
    associate_public_ip_address = true
    security_groups             = [aws_security_group.workers[0].id]
    delete_on_termination       = true
  }

  block_device_mappings {
    device_name = data.aws_ami.this.root_device_name

    ebs {
      encrypted             = true
      volume_type           = "gp3"
      volume_size           = 20
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(local.tags, { Name = "${var.name}-worker" })
  }

  tags = local.tags
}

resource "aws_autoscaling_group" "this" {
  count = local.node ? 1 : 0

  name                = local.worker_group_name
  min_size            = var.workers_min
  max_size            = var.workers_max
  desired_capacity    = var.workers_min
  vpc_zone_identifier = aws_subnet.public[*].id
  health_check_type   = "EC2"

  launch_template {
    id      = aws_launch_template.this[0].id
    version = aws_launch_template.this[0].latest_version
  }

  # A new pygrid version or Node address replaces the Workers one by one.
  instance_refresh {
    strategy = "Rolling"

    preferences {
      min_healthy_percentage = 50
    }
  }

  dynamic "tag" {
    for_each = merge(local.tags, { Name = "${var.name}-worker" })

    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    # The Node owns the desired capacity once running (it scales on its queue depth).
    ignore_changes = [desired_capacity]
  }

  # Workers read their token at boot: let them find their permission in place.
  depends_on = [aws_iam_role_policy.worker]
}
