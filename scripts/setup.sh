#!/usr/bin/env bash
# Idempotent set-up shared by `scripts/up.sh` and `scripts/test.sh`.
#
# - installs the system packages the tests need (PostgreSQL, Chromium for the dashboard tests),
#   when missing and we may (root + apt);
# - creates .venv with Python 3.11+;
# - installs torch (pinned CPU build) first, then `pip install -e ".[dev,aws,gcp,azure]"`.
#
# The Python installs are skipped while .venv/.pygrid-setup-stamp holds the hash of setup.py and
# of this script, so a second run takes well under a second.
# Progress goes to stderr so that `scripts/up.sh` output stays clean.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv"
STAMP="$VENV/.pygrid-setup-stamp"
# Pinned: a bare `torch` pulls the multi-GB CUDA build; ==2.13.0 matches the local +cpu wheel.
TORCH_SPEC="torch==2.13.0"
START=$SECONDS

say() { printf '[setup] %s\n' "$*" >&2; }
die() {
    printf '[setup] error: %s\n' "$*" >&2
    exit 1
}

# Run a noisy command quietly; on failure show the tail of its output and stop.
quiet() {
    local log
    log="$(mktemp)"
    if ! "$@" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        rm -f "$log"
        die "failed: $*"
    fi
    rm -f "$log"
}

have_initdb() { compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; }
# tests/browser drives Debian's chromium through Playwright (never `playwright install`).
have_chromium() { [[ -x /usr/bin/chromium ]]; }
# Azurite (the Azure Blob emulator the storage tests use) is an npm package.
have_node() { command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; }

ensure_system_packages() {
    local missing=()
    have_initdb || missing+=(postgresql)
    have_chromium || missing+=(chromium)
    have_node || missing+=(nodejs npm)
    ((${#missing[@]})) || return 0
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "installing system packages: ${missing[*]} (apt-get)"
        export DEBIAN_FRONTEND=noninteractive
        quiet apt-get update -q
        quiet apt-get install -y -q --no-install-recommends "${missing[@]}"
        have_initdb || die "postgresql is installed but no /usr/lib/postgresql/*/bin/initdb exists"
        have_chromium || die "chromium is installed but /usr/bin/chromium does not exist"
        have_node || die "nodejs and npm are installed but node or npm is not on PATH"
    else
        say "warning: missing system packages: ${missing[*]}; the postgres and browser tests" \
            "skip locally (and fail under CI=true). Install with: sudo apt-get install ${missing[*]}"
    fi
}

is_py311() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.11 python3; do
        if [[ -z $candidate ]] || ! command -v "$candidate" >/dev/null 2>&1; then continue; fi
        if is_py311 "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

ensure_venv() {
    if [[ -x $VENV/bin/python ]] && is_py311 "$VENV/bin/python"; then
        return 0
    fi
    local python
    python="$(find_python)" || die "Python 3.11+ is required: none of \$PYTHON, python3.11," \
        "python3 is 3.11 or newer (python3 is $(python3 -V 2>&1 || echo missing))"
    say "creating .venv with $python ($("$python" -V 2>&1))"
    # --clear: a .venv from an older Python (or a broken one) is replaced, not patched.
    "$python" -m venv --clear "$VENV" ||
        die "'$python -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)"
}

setup_hash() { cat setup.py scripts/setup.sh | sha256sum | cut -d' ' -f1; }

ensure_python_packages() {
    local want
    want="$(setup_hash)"
    if [[ -f $STAMP && $(<"$STAMP") == "$want" && -x $VENV/bin/pygrid ]]; then
        say "python packages up to date (.venv)"
        return 0
    fi
    rm -f "$STAMP"
    local pip=(quiet "$VENV/bin/python" -m pip --disable-pip-version-check)
    say "upgrading pip, setuptools, wheel"
    "${pip[@]}" install --upgrade pip setuptools wheel
    say "installing $TORCH_SPEC (CPU build)"
    "${pip[@]}" install "$TORCH_SPEC"
    say "installing pygrid in editable mode with extras dev, aws, gcp, azure"
    # No build isolation: setuptools and wheel were just upgraded in .venv; saves a download.
    "${pip[@]}" install --no-build-isolation -e ".[dev,aws,gcp,azure]"
    printf '%s\n' "$want" >"$STAMP"
}

# checkov scans the Terraform modules offline. It pins boto3 and attrs versions that clash with
# PyGrid's own, so it lives in a venv of its own: .tools/checkov (tests find it there).
CHECKOV_SPEC="checkov>=3.2,<4"
ensure_checkov() {
    local tools="$ROOT/.tools/checkov" want
    want="$(printf '%s' "$CHECKOV_SPEC" | sha256sum | cut -d' ' -f1)"
    if [[ -x $tools/bin/checkov && -f $tools/.stamp && $(<"$tools/.stamp") == "$want" ]]; then
        return 0
    fi
    say "installing $CHECKOV_SPEC into .tools/checkov"
    quiet "$(find_python)" -m venv --clear "$tools"
    quiet "$tools/bin/python" -m pip --disable-pip-version-check install "$CHECKOV_SPEC"
    printf '%s\n' "$want" >"$tools/.stamp"
}

# --- Azurite -------------------------------------------------------------------------------------
# The Azure Blob Storage emulator (npm) that tests/unit/test_storage.py runs the Azure blob store
# against. It needs node; it lives in .tools/azurite (tests find it there, and skip without it).
AZURITE_SPEC="azurite@3.37.0"
ensure_azurite() {
    local tools="$ROOT/.tools/azurite" want
    want="$(printf '%s' "$AZURITE_SPEC" | sha256sum | cut -d' ' -f1)"
    if [[ -x $tools/node_modules/.bin/azurite-blob && -f $tools/.stamp && $(<"$tools/.stamp") == "$want" ]]; then
        return 0
    fi
    if ! have_node; then
        say "warning: node/npm missing; the Azure Blob store tests skip." \
            "Install with: sudo apt-get install nodejs npm"
        return 0
    fi
    say "installing $AZURITE_SPEC into .tools/azurite (npm)"
    mkdir -p "$tools"
    quiet npm install --prefix "$tools" --no-audit --no-fund --no-save "$AZURITE_SPEC"
    printf '%s\n' "$want" >"$tools/.stamp"
}

ensure_system_packages
ensure_venv
ensure_python_packages
ensure_checkov
ensure_azurite
say "ready in $((SECONDS - START)) s"
