#!/usr/bin/env bash
# Build the wheel, check what it ships, install it (non-editable) into a fresh virtualenv and run
# the CLI from outside the repository, so that only the installed package can be imported.
#
# The wheel is built from a clean copy of the files git would ship (tracked and untracked, minus
# .gitignore'd ones): a stale build/ or a stray local file cannot leak into it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
START=$SECONDS

say() { printf '[wheel] %s\n' "$*" >&2; }
die() {
    printf '[wheel] FAILED: %s\n' "$*" >&2
    exit 1
}
# run LOG CMD...: run CMD with its output in LOG; on failure show the tail and stop.
run() {
    local log=$1
    shift
    if ! "$@" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        die "$*"
    fi
}

[[ -x $PY ]] || die "$PY is missing: run scripts/setup.sh first"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/pygrid-wheel.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/tree" "$WORK/dist" "$WORK/run"

say "copying the source tree"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (
        cd "$ROOT"
        git ls-files -z --cached --others --exclude-standard |
            while IFS= read -r -d '' f; do
                # tracked files deleted in the work tree are listed too
                if [[ -e $f ]]; then printf '%s\0' "$f"; fi
            done |
            tar --null -T - -cf -
    ) | tar -xf - -C "$WORK/tree"
else
    tar -C "$ROOT" --exclude=./.venv --exclude=./.git --exclude=./build --exclude=./dist \
        --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -xf - -C "$WORK/tree"
fi

say "building the wheel"
# No isolation: .venv has the build requirements (setuptools, wheel); `build` checks them.
run "$WORK/build.log" "$PY" -m build --wheel --no-isolation --outdir "$WORK/dist" "$WORK/tree"
shopt -s nullglob
wheels=("$WORK"/dist/*.whl)
shopt -u nullglob
[[ ${#wheels[@]} -eq 1 ]] || die "expected one wheel in dist/, found ${#wheels[@]}"
WHEEL=${wheels[0]}

say "checking the contents of $(basename "$WHEEL")"
"$PY" - "$WHEEL" <<'EOF' || die "wheel contents"
"""Check that the wheel ships only the `pygrid` package, with its data files."""

import configparser
import sys
import zipfile

REQUIRED = [
    "pygrid/__init__.py",
    "pygrid/cli/__init__.py",
    "pygrid/apps/__init__.py",
    "pygrid/apps/node/run.sh",
    "pygrid/db/migrations/env.py",
    "pygrid/db/migrations/versions/0002_model_centric_fl.py",
    "pygrid/infra/aws/main.tf",
    "pygrid/infra/gcp/main.tf",
    "pygrid/infra/azure/main.tf",
    "pygrid/templates/root.tf.j2",
    "pygrid/templates/app-startup.sh.j2",
    "pygrid/infra/__init__.py",
    "pygrid/templates/__init__.py",
]

with zipfile.ZipFile(sys.argv[1]) as wheel:
    names = wheel.namelist()
    dist_info = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
    entry_points = next((n for n in names if n.endswith(".dist-info/entry_points.txt")), None)
    scripts = configparser.ConfigParser()
    if entry_points:
        scripts.read_string(wheel.read(entry_points).decode())

problems = []
top_level = sorted({n.split("/")[0] for n in names} - {"pygrid"} - dist_info)
if top_level:
    problems.append(f"top-level entries other than pygrid/ and *.dist-info: {top_level}")
if len(dist_info) != 1:
    problems.append(f"expected one .dist-info folder, found {sorted(dist_info)}")
problems += [f"missing {name}" for name in REQUIRED if name not in names]
compiled = [n for n in names if "__pycache__/" in n or n.endswith((".pyc", ".pyo"))]
if compiled:
    problems.append(f"compiled files shipped: {compiled[:5]}")
# every console script must point at a module the wheel really holds
console = scripts["console_scripts"] if scripts.has_section("console_scripts") else {}
if "pygrid" not in console:
    problems.append("no `pygrid` console script in entry_points.txt")
for script, target in console.items():
    module = target.split(":")[0].strip().replace(".", "/")
    if f"{module}.py" not in names and f"{module}/__init__.py" not in names:
        problems.append(f"console script {script} -> {target}: module not in the wheel")

if problems:
    print("\n".join(f"  - {p}" for p in problems), file=sys.stderr)
    sys.exit(1)
packages = sorted({n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")})
print(f"[wheel] ok: {len(names)} files, {len(packages)} packages, top level: pygrid/", file=sys.stderr)
EOF

say "installing the wheel into a fresh virtualenv"
# --without-pip + `pip --python`: the project's pip installs into the new environment, which
# saves bootstrapping a second pip.
run "$WORK/venv.log" "$PY" -m venv --without-pip "$WORK/venv"
VPY="$WORK/venv/bin/python"
# torch first, pinned: the wheel asks for a range, and an unpinned resolve pulls the CUDA build.
run "$WORK/install.log" "$PY" -m pip --python "$VPY" install --disable-pip-version-check \
    --progress-bar off "torch==2.13.0"
run "$WORK/install-wheel.log" "$PY" -m pip --python "$VPY" install --disable-pip-version-check \
    --progress-bar off "$WHEEL"
"$VPY" -c 'import sys, torch; sys.exit(torch.__version__ != "2.13.0+cpu")' ||
    die "installing the wheel replaced the pinned CPU torch (see: pip --python $VPY list)"

say "running the installed CLI from outside the repository"
cd "$WORK/run"
unset PYTHONPATH PYTHONHOME
"$VPY" - "$ROOT" <<'EOF' || die "imports from the installed wheel"
"""Only the installed `pygrid` is importable: no top-level cli/apps/src/tests, no source tree."""

import importlib.util
import sys
from pathlib import Path

import pygrid
import pygrid.cli

root = Path(sys.argv[1]).resolve()
for module in (pygrid, pygrid.cli):
    where = Path(module.__file__ or "").resolve()
    if "site-packages" not in where.parts or root in where.parents:
        sys.exit(f"{module.__name__} imported from {where}, not from the installed wheel")
stray = [name for name in ("cli", "apps", "src", "tests") if importlib.util.find_spec(name)]
if stray:
    sys.exit(f"top-level modules importable from the installed wheel: {stray}")
EOF
for args in "--help" "node --help"; do
    # shellcheck disable=SC2086 # split args on purpose
    run "$WORK/cli.log" "$WORK/venv/bin/pygrid" $args
    say "ok: pygrid $args"
done

say "passed in $((SECONDS - START)) s"
