#!/usr/bin/env bash
# Installs Azurite, the Azure Storage emulator the wabs:// tests run against,
# from the npm registry, and prints the path of its azurite-blob program.
# Cached in $WALE_AZURITE_CACHE (default /var/tmp/wal-e-azurite): a second
# call does nothing.
set -euo pipefail

version=3.35.0
root=${WALE_AZURITE_CACHE:-/var/tmp/wal-e-azurite}/$version
bin=$root/node_modules/.bin/azurite-blob

if [[ ! -x $bin ]]; then
  command -v npm >/dev/null || { echo "install-azurite: npm is needed" >&2; exit 1; }
  staging="$root.partial.$$"
  trap 'rm -rf "$staging"' EXIT
  mkdir -p "$staging"
  (cd "$staging" && npm install --silent --no-audit --no-fund --no-save --prefix . "azurite@$version" >/dev/null)
  chmod -R a+rX "$staging"
  rm -rf "$root"
  mv "$staging" "$root"
fi
echo "$bin"
