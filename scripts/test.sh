#!/usr/bin/env bash
# The whole gate, as CI runs it: set-up, lint, format, types, wheel, tests.
#
#   bash scripts/test.sh [pytest args...]
#
# Every stage runs even when an earlier one failed (one run shows every problem); the script
# exits non-zero if any stage failed. Elapsed seconds are printed per stage.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="$ROOT/.venv/bin"

STAGES=()
FAILED=()

now_ms() { echo $((${EPOCHREALTIME//[!0-9]/} / 1000)); } # EPOCHREALTIME: s.us (locale point)

# stage NAME CMD...: run CMD, record its result and how long it took.
stage() {
    local name=$1 start rc=0 ms
    shift
    printf '\n==> %s: %s\n' "$name" "$*"
    start=$(now_ms)
    "$@" || rc=$?
    ms=$(($(now_ms) - start))
    local line
    line=$(printf '%-8s %6d.%d s  %s' "$name" $((ms / 1000)) $((ms % 1000 / 100)) \
        "$([[ $rc -eq 0 ]] && echo ok || echo "FAILED (exit $rc)")")
    STAGES+=("$line")
    printf '<== %s\n' "$line"
    if [[ $rc -ne 0 ]]; then FAILED+=("$name"); fi
    return 0
}

# mypy cannot follow setup.py's package_dir mapping (several folders -> one `pygrid`) nor the
# import hook of an editable install, so it checks a tree of symlinks shaped like the installed
# package and error paths are mapped back to the real files.
typecheck() {
    local tree rc=0
    tree="$(mktemp -d "${TMPDIR:-/tmp}/pygrid-mypy.XXXXXX")"
    mkdir "$tree/pygrid"
    local entry
    for entry in "$ROOT"/src/pygrid/*; do
        ln -s "$entry" "$tree/pygrid/" || { rm -rf "$tree"; return 1; }
    done
    for entry in cli apps infra templates; do
        if [[ -d $ROOT/$entry ]]; then
            ln -s "$ROOT/$entry" "$tree/pygrid/$entry" || { rm -rf "$tree"; return 1; }
        fi
    done
    (cd "$tree" && MYPYPATH="$tree" "$BIN/mypy" --config-file "$ROOT/pyproject.toml" \
        --cache-dir "$ROOT/.mypy_cache" -p pygrid) 2>&1 |
        sed -E -e 's#^pygrid/(cli|apps|infra|templates)/#\1/#' -e 's#^pygrid/#src/pygrid/#' ||
        rc=$?
    # pipefail: rc is mypy's status unless sed itself failed
    rm -rf "$tree"
    return "$rc"
}

START_ALL=$(now_ms)
stage setup bash scripts/setup.sh
if [[ ${#FAILED[@]} -ne 0 ]]; then
    echo "set-up failed: nothing else can run" >&2
    exit 1
fi
stage lint "$BIN/ruff" check .
stage format "$BIN/ruff" format --check .
stage types typecheck
stage wheel bash scripts/check_wheel.sh
# One pytest process per core (at most 4), a test file per process at a time: module-scoped
# servers are started once, and files run side by side while their servers start and wait.
stage pytest "$BIN/pytest" -n auto --maxprocesses 4 --dist loadfile "$@"

total=$(($(now_ms) - START_ALL))
printf '\n==> summary\n'
printf '    %s\n' "${STAGES[@]}"
printf '    %-8s %6d.%d s\n' total $((total / 1000)) $((total % 1000 / 100))
if [[ ${#FAILED[@]} -ne 0 ]]; then
    printf 'FAILED stages: %s\n' "${FAILED[*]}" >&2
    exit 1
fi
echo "all stages passed"
