#!/usr/bin/env bash
# PyGrid's manual start, kept working: cd apps/network && ./run.sh --id bob --port 5000 --start_local_db
# A thin wrapper: every option and environment variable is the one `pygrid network --help` documents.
set -euo pipefail
exec "${PYTHON:-python3}" -m pygrid.cli network "$@"
