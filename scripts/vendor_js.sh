#!/usr/bin/env bash
# Vendor the dashboards' chart library from npm into src/pygrid/server/static/vendor/.
#
#   bash scripts/vendor_js.sh
#
# The files are committed: the servers serve them from the package, so neither a runtime nor CI
# needs npm or a CDN. Run this only to move to another pinned version (edit VERSION and
# INTEGRITY together; `npm view chart.js@X dist.integrity` prints the integrity).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PACKAGE=chart.js
VERSION=4.5.1
# npm's sha512 of the tarball: npm pack checks the download against the registry's metadata,
# this pin checks the registry's metadata against what was reviewed.
INTEGRITY="sha512-GIjfiT9dbmHRiYi6Nl2yFCq7kkwdkp1W/lp2J99rX0yo9tgJGn3lKQATztIjb5tVtevcBtIdICNWqlq5+E8/Pw=="
DEST="$ROOT/src/pygrid/server/static/vendor"

die() {
    printf '[vendor] error: %s\n' "$*" >&2
    exit 1
}

command -v npm >/dev/null 2>&1 || die "npm is needed to vendor $PACKAGE (apt-get install npm)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/pygrid-vendor.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

(cd "$WORK" && npm pack --silent --json "$PACKAGE@$VERSION" >pack.json) ||
    die "npm pack $PACKAGE@$VERSION failed"
got="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[0]["integrity"])' \
    "$WORK/pack.json")"
[[ $got == "$INTEGRITY" ]] || die "$PACKAGE@$VERSION has integrity $got, expected $INTEGRITY"

tar -xzf "$WORK/$PACKAGE-$VERSION.tgz" -C "$WORK" package/dist/chart.umd.min.js package/LICENSE.md
head -c 200 "$WORK/package/dist/chart.umd.min.js" | grep -q "Chart.js v$VERSION" ||
    die "package/dist/chart.umd.min.js does not say it is Chart.js v$VERSION"

mkdir -p "$DEST"
install -m 0644 "$WORK/package/dist/chart.umd.min.js" "$DEST/chart.umd.min.js"
install -m 0644 "$WORK/package/LICENSE.md" "$DEST/chart.js.LICENSE.md"
printf '[vendor] %s %s -> %s\n' "$PACKAGE" "$VERSION" "${DEST#"$ROOT"/}" >&2
