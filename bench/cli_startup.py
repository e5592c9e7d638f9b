"""How fast ``pygrid --help`` answers, against a bare Python start measured in the same run.

Prints one JSON line. Run: .venv/bin/python bench/cli_startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def timed(command: list[str], runs: int) -> list[float]:
    """Wall seconds of ``runs`` executions of ``command``."""
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=os.path.expanduser("~"))
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    """Measure and print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    runs = parser.parse_args().runs
    python = timed([sys.executable, "-c", "pass"], runs)
    cli = timed([sys.executable, "-m", "pygrid.cli", "--help"], runs)
    heavy = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, pygrid.cli; print(sorted(m for m in "
            "('torch','flask','sqlalchemy','boto3','numpy','requests') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(
        json.dumps(
            {
                "bench": "cli_startup",
                "runs": runs,
                "python_start_median_s": round(statistics.median(python), 4),
                "pygrid_help_median_s": round(statistics.median(cli), 4),
                "pygrid_help_p90_s": round(sorted(cli)[int(0.9 * (runs - 1))], 4),
                "ratio_to_python_start": round(
                    statistics.median(cli) / statistics.median(python), 2
                ),
                "heavy_modules_imported_by_cli": json.loads(heavy.replace("'", '"')),
            }
        )
    )


if __name__ == "__main__":
    main()
