#!/usr/bin/env bash
# Installs the real WAL-E 1.1.1, which the interoperability tests run beside
# our wal-e, and prints the path of its launcher (run it with WAL-E's
# arguments). The packages come from PyPI, pinned exactly in
# tests/wal-e-1.1.1-requirements.txt, into a virtualenv on Debian's
# /usr/bin/python3 (the postgres user runs WAL-E as archive_command, so it
# must not live under /root). WAL-E also needs lzop, pv, psql and, with
# encryption, gpg on PATH (install-deps.sh installs them).
#
# Cached in $WALE_PY_CACHE (default /var/tmp/wal-e-py), in a directory named
# after the hash of the pins and the launcher: a second call does nothing,
# changing either installs afresh.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
requirements=$here/tests/wal-e-1.1.1-requirements.txt
launcher=$here/tests/wal_e_py/wal-e-local.py
cache=${WALE_PY_CACHE:-/var/tmp/wal-e-py}
hash=$(cat "$requirements" "$launcher" | sha256sum | cut -c1-16)
root=$cache/$hash
run=$root/bin/wal-e-local

if [[ ! -e $root/.complete ]]; then
  mkdir -p "$cache"
  chmod 755 "$cache"
  exec 9>"$cache/.lock"
  flock 9
  if [[ ! -e $root/.complete ]]; then
    rm -rf "$root"
    /usr/bin/python3 -m venv "$root"
    "$root/bin/pip" install --quiet --disable-pip-version-check --no-input \
      --no-deps -r "$requirements" >&2
    check=$("$root/bin/pip" check --disable-pip-version-check) || { echo "$check" >&2; exit 1; }
    cat > "$run" <<SH
#!/bin/sh
exec '$root/bin/python' '$root/wal-e-local.py' "\$@"
SH
    cp "$launcher" "$root/wal-e-local.py"
    chmod 755 "$run"
    chmod -R a+rX "$root"
    touch "$root/.complete"
  fi
fi
echo "$run"
