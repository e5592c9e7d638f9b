#!/usr/bin/env bash
# Run a local grid: set up .venv if needed, then `pygrid up` with the given arguments.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
exec .venv/bin/pygrid up "$@"
