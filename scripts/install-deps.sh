#!/usr/bin/env bash
# Installs the system packages that building and testing wal-e need, on
# Debian 12, Azurite from npm and the real WAL-E 1.1.1 from PyPI.
# Idempotent: does nothing when everything is present.
set -euo pipefail

# command-or-file to look for -> Debian package that provides it
declare -A wanted=(
  [cmake]=cmake                                  # lzo-sys builds liblzo2 with it
  [pkg-config]=pkg-config                        # sequoia's nettle backend
  [/usr/include/nettle/nettle-types.h]=nettle-dev
  [/usr/lib/llvm-14/lib/libclang.so]=libclang-dev  # bindgen for nettle-sys
  [lzop]=lzop                                    # compatibility tests
  [gpg]=gnupg                                    # compatibility tests
  [openssl]=openssl                              # certificates for the TLS tests
  [pv]=pv                                        # the real WAL-E needs it
  [/usr/lib/python3.11/ensurepip/__init__.py]=python3-venv  # its virtualenv
  [/usr/lib/postgresql/15/bin/postgres]=postgresql-15  # test clusters (with contrib: amcheck)
  [npm]=npm                                      # other PostgreSQL majors for tests
  [swift-proxy-server]=swift-proxy               # Swift all-in-one for tests
  [swift-object-server]=swift-object             #   (scripts/swift-aio.sh)
  [swift-container-server]=swift-container
  [swift-account-server]=swift-account
  [memcached]=memcached                          #   TempAuth keeps tokens there
)

missing=()
for probe in "${!wanted[@]}"; do
  if [[ $probe == /* ]]; then
    [[ -e $probe ]] || missing+=("${wanted[$probe]}")
  else
    command -v "$probe" >/dev/null 2>&1 || missing+=("${wanted[$probe]}")
  fi
done

if ((${#missing[@]} > 0)); then
  if [[ $(id -u) != 0 ]]; then
    echo "install-deps: missing packages: ${missing[*]} (run as root, or apt-get install them)" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Azure Storage emulator for the wabs:// tests (npm, cached).
"$(dirname "$0")/install-azurite.sh" >/dev/null

# The real WAL-E 1.1.1 for the interoperability tests (PyPI, cached).
"$(dirname "$0")/install-wal-e.sh" >/dev/null
