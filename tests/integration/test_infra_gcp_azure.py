"""The GCP and Azure Terraform modules load, are formatted, pass checkov with every exception written
down, and share one set of inputs, outputs and startup-script placeholders with AWS (infra/README.md).

All of it runs offline: the google and azurerm providers are never downloaded.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.terraform import INFRA, checkov, fmt_problems, load_diagnostics

pytestmark = pytest.mark.cloud

CLOUDS = ["gcp", "azure"]
ALL_CLOUDS = ["aws", "gcp", "azure"]

# Every checkov check a module skips, and on which resource. The reason sits next to the skip in
# the HCL (#checkov:skip=ID:reason); a new skip has to be added here, so it gets reviewed.
DOCUMENTED_SKIPS = {
    "gcp": {
        # usage logs would need a second bucket per deployment
        ("CKV_GCP_62", "google_storage_bucket.this"),
        # the app VM serves app_url on its public address
        ("CKV_GCP_40", "google_compute_instance.this"),
        # Google-managed disk encryption, no customer-supplied keys
        ("CKV_GCP_38", "google_compute_instance.this"),
        # TLS required (ENCRYPTED_ONLY) on a private IP; no client certificates
        ("CKV_GCP_6", "google_sql_database_instance.this"),
        # PostgreSQL 17 pinned, not the scanner's newest major
        ("CKV_GCP_79", "google_sql_database_instance.this"),
        # log_duration would log every statement
        ("CKV2_GCP_13", "google_sql_database_instance.this"),
    },
    "azure": {
        # the app VM serves app_url on its public address
        ("CKV_AZURE_119", "azurerm_network_interface.this"),
        # no queue; queue logging is data-plane configuration
        ("CKV_AZURE_33", "azurerm_storage_account.this"),
        # Microsoft-managed keys, no customer-managed key
        ("CKV2_AZURE_1", "azurerm_storage_account.this"),
        # the name holds a hash of the subscription id, which checkov cannot evaluate
        ("CKV_AZURE_43", "azurerm_storage_account.this"),
        # blob read logging needs a Log Analytics workspace
        ("CKV2_AZURE_21", "azurerm_storage_container.this"),
        # VNet-integrated server: Azure has no private endpoint for it
        ("CKV2_AZURE_57", "azurerm_postgresql_flexible_server.this"),
        # the deploying machine writes the secret over the vault's public endpoint
        ("CKV_AZURE_109", "azurerm_key_vault.this"),
        ("CKV_AZURE_189", "azurerm_key_vault.this"),
        ("CKV2_AZURE_32", "azurerm_key_vault.this"),
        # rotated by redeploying; an expiry would stop the Node
        ("CKV_AZURE_41", "azurerm_key_vault_secret.database"),
        # encryption at host needs a subscription feature flag
        ("CKV_AZURE_97", "azurerm_linux_virtual_machine_scale_set.worker"),
    },
}

# Inputs that switch every optional resource on (Worker group, managed database, SSH), so checkov
# sees the whole module; the defaults scan sees the smallest one.
EVERYTHING_ON = """\
app              = "node"
name             = "alice"
region           = "europe-west2"
pygrid_version   = "1.0.0"
database         = "managed"
allowed_cidrs    = ["203.0.113.0/24"]
ssh_public_key   = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPyGridTestKeyOnly pygrid"
workers_min      = 1
workers_max      = 4
app_user_data    = "#!/bin/sh\\n"
worker_user_data = "#!/bin/sh\\n"
"""

SKIP_COMMENT = re.compile(r"#\s*checkov:skip=(?P<check>[A-Z0-9_]+)(?::(?P<reason>.*))?")
TOP_LEVEL_BLOCK = re.compile(r'^(?:resource|data) "(?P<type>[\w-]+)" "(?P<name>[\w-]+)"')
PLACEHOLDER = re.compile(r"__PYGRID_[A-Z_]+__")


def inline_skips(directory: Path) -> list[tuple[str, str, str]]:
    """(check id, resource address, reason) of every ``#checkov:skip`` in ``directory``."""
    found = []
    for path in sorted(directory.glob("*.tf")):
        block = "?"
        for line in path.read_text().splitlines():
            header = TOP_LEVEL_BLOCK.match(line)
            if header:
                block = f"{header['type']}.{header['name']}"
            skip = SKIP_COMMENT.search(line)
            if skip:
                found.append((skip["check"], block, (skip["reason"] or "").strip()))
            if line.startswith("}"):
                block = "?"
    return found


def top_level_blocks(directory: Path, kind: str) -> dict[str, str]:
    """Name -> body of each ``kind`` block ("variable", "output"); terraform fmt puts the closing
    brace of a top-level block at the start of a line, which is where each body ends."""
    text = "\n".join(path.read_text() for path in sorted(directory.glob("*.tf")))
    pattern = re.compile(rf'^{kind} "(?P<name>[\w-]+)" \{{\n(?P<body>.*?)^\}}', re.M | re.S)
    return {match["name"]: match["body"] for match in pattern.finditer(text)}


def contract_names(section: str) -> set[str]:
    """Names in the first column of infra/README.md's Inputs or Outputs table."""
    readme = (INFRA / "README.md").read_text()
    table = readme.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in table.splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`(\w+)`", line.split("|")[1]))
    return names


def present(cloud: str) -> Path:
    """The cloud's module; AWS is written in parallel, so its absence skips rather than fails."""
    directory = INFRA / cloud
    if not (directory / "variables.tf").exists():
        pytest.skip(f"infra/{cloud}/variables.tf does not exist yet")
    return directory


def skipped_count(reports: list[dict[str, Any]]) -> int:
    return sum(report.get("summary", {}).get("skipped", 0) for report in reports)


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict[str, dict[str, Any]]]:
    """checkov on a module as it is (defaults) and with every optional resource on; once each."""
    reports: dict[str, dict[str, dict[str, Any]]] = {}

    def run(cloud: str) -> dict[str, dict[str, Any]]:
        if cloud not in reports:
            copy = tmp_path_factory.mktemp(f"{cloud}-everything-on")
            for path in (INFRA / cloud).glob("*.tf"):
                shutil.copy(path, copy)
            (copy / "terraform.tfvars").write_text(EVERYTHING_ON)
            reports[cloud] = {"defaults": checkov(INFRA / cloud), "everything on": checkov(copy)}
        return reports[cloud]

    return run


def test_the_loader_reports_a_broken_module(tmp_path: Path) -> None:
    # Prepare: what load_problems finds must not be vacuous
    (tmp_path / "main.tf").write_text(
        'variable "size" {\n  type = nope\n}\n\nresource "google_compute_network" "this" {\n'
        "  lifecycle {\n    bogus = true\n  }\n}\n"
    )
    # Execute
    problems = load_diagnostics(tmp_path)
    # Assert
    assert any("Invalid type specification" in problem for problem in problems), problems
    assert any("Unsupported argument" in problem for problem in problems), problems


@pytest.mark.parametrize("cloud", CLOUDS)
def test_module_loads_without_diagnostics(cloud: str) -> None:
    assert load_diagnostics(INFRA / cloud) == []


@pytest.mark.parametrize("cloud", CLOUDS)
def test_every_reference_resolves(cloud: str) -> None:
    # Prepare: without the providers there is no terraform validate, so check names by hand
    text = "\n".join(path.read_text() for path in sorted((INFRA / cloud).glob("*.tf")))
    code = re.sub(r"^\s*#.*$", "", text, flags=re.M)
    variables = set(top_level_blocks(INFRA / cloud, "variable"))
    resources = set(re.findall(r'^resource "([\w-]+)" "([\w-]+)"', text, re.M))
    data_sources = set(re.findall(r'^data "([\w-]+)" "([\w-]+)"', text, re.M))
    local_names = {
        name
        for body in re.findall(r"^locals \{\n(.*?)^\}", text, re.M | re.S)
        for name in re.findall(r"^  (\w+)\s*=", body, re.M)
    }
    # Execute
    unresolved = (
        [f"var.{name}" for name in set(re.findall(r"\bvar\.(\w+)", code)) - variables]
        + [f"local.{name}" for name in set(re.findall(r"\blocal\.(\w+)", code)) - local_names]
        + [
            f"{kind}.{name}"
            for kind, name in set(
                re.findall(r"(?<![\w.])((?:google|azurerm|terraform)_\w+)\.(\w+)", code)
            )
            - resources
        ]
        + [
            f"data.{kind}.{name}"
            for kind, name in set(re.findall(r"\bdata\.(\w+)\.(\w+)", code)) - data_sources
        ]
    )
    # Assert
    assert sorted(unresolved) == []


@pytest.mark.parametrize("cloud", CLOUDS)
def test_module_is_formatted(cloud: str) -> None:
    assert fmt_problems(INFRA / cloud) == []


@pytest.mark.parametrize("cloud", CLOUDS)
def test_checkov_finds_nothing(
    cloud: str, scan: Callable[[str], dict[str, dict[str, Any]]]
) -> None:
    for variant, result in scan(cloud).items():
        assert result["parsing_errors"] == 0, f"{cloud} ({variant}): checkov could not parse it"
        assert result["failed"] == [], f"{cloud} ({variant})"


@pytest.mark.parametrize("cloud", CLOUDS)
def test_checkov_skips_are_the_documented_ones(
    cloud: str, scan: Callable[[str], dict[str, dict[str, Any]]]
) -> None:
    # Prepare
    skips = inline_skips(INFRA / cloud)
    # Execute
    everything_on = scan(cloud)["everything on"]
    # Assert: the documented list, each with a written reason, each suppressing a real finding
    assert {(check, resource) for check, resource, _ in skips} == DOCUMENTED_SKIPS[cloud]
    assert len(skips) == len(DOCUMENTED_SKIPS[cloud]), "a check is skipped twice on one resource"
    unexplained = [(check, resource) for check, resource, reason in skips if len(reason) < 20]
    assert unexplained == [], "every #checkov:skip=ID:reason needs a real reason"
    assert skipped_count(everything_on["raw"]) == len(skips), "a skip no longer suppresses a check"


@pytest.mark.parametrize(("kind", "section"), [("variable", "Inputs"), ("output", "Outputs")])
def test_modules_share_inputs_and_outputs(kind: str, section: str) -> None:
    # Prepare
    modules = {cloud: INFRA / cloud for cloud in CLOUDS}
    if (INFRA / "aws" / "variables.tf").exists():
        modules["aws"] = INFRA / "aws"
    # Execute
    names = {cloud: set(top_level_blocks(path, kind)) for cloud, path in modules.items()}
    # Assert
    contract = contract_names(section)
    for cloud, declared in names.items():
        assert declared == contract, (
            f"infra/{cloud}: missing {sorted(contract - declared)}, "
            f"not in infra/README.md {sorted(declared - contract)}"
        )


@pytest.mark.parametrize("cloud", ALL_CLOUDS)
def test_every_variable_has_a_description_and_a_type(cloud: str) -> None:
    variables = top_level_blocks(present(cloud), "variable")
    assert variables
    for name, body in variables.items():
        assert re.search(r'^  description\s*=\s*"\S', body, re.M), (
            f"{cloud}: {name} has no description"
        )
        assert re.search(r"^  type\s*=\s*\S", body, re.M), f"{cloud}: {name} has no type"


def test_modules_replace_the_same_placeholders() -> None:
    # Prepare: one set of startup-script templates serves every cloud
    clouds = [cloud for cloud in ALL_CLOUDS if (INFRA / cloud / "main.tf").exists()]
    # Execute
    placeholders = {
        cloud: set(PLACEHOLDER.findall((INFRA / cloud / "main.tf").read_text())) for cloud in clouds
    }
    # Assert
    assert "__PYGRID_NODE_URL__" in placeholders["gcp"]
    for cloud in clouds:
        assert placeholders[cloud] == placeholders["gcp"], f"{cloud} vs gcp"
