#!/usr/bin/env bash
# An OpenStack Swift all-in-one on 127.0.0.1 for tests: Debian 12's swift
# servers (proxy, object, container, account) with TempAuth, memcached and a
# one-replica ring on one directory. Everything lives in DIR; it runs in the
# foreground until a server exits or it is killed (the test harness kills its
# whole process group).
#
#   scripts/swift-aio.sh DIR
#
# Ports come from the environment (defaults in brackets): SWIFT_PROXY_PORT
# [8080], SWIFT_PROXY_NOBULK_PORT [8081] (a second proxy whose /info hides
# bulk delete), SWIFT_OBJECT_PORT [6200], SWIFT_CONTAINER_PORT [6201],
# SWIFT_ACCOUNT_PORT [6202], MEMCACHED_PORT [11211]. Hash prefixes, storage
# policies and constraints come from Debian's /etc/swift/swift.conf, which
# Swift always reads.
#
# TempAuth (v1) at http://127.0.0.1:$SWIFT_PROXY_PORT/auth/v1.0:
#   test:tester / testing, walrust:user / secret, admin:admin / admin.
# Packages: swift swift-proxy swift-object swift-container swift-account
# memcached (scripts/install-deps.sh installs them).
set -euo pipefail

dir=${1:?usage: swift-aio.sh DIR}
proxy_port=${SWIFT_PROXY_PORT:-8080}
nobulk_port=${SWIFT_PROXY_NOBULK_PORT:-8081}
object_port=${SWIFT_OBJECT_PORT:-6200}
container_port=${SWIFT_CONTAINER_PORT:-6201}
account_port=${SWIFT_ACCOUNT_PORT:-6202}
memcached_port=${MEMCACHED_PORT:-11211}

etc=$dir/etc
mkdir -p "$etc" "$dir/node/sdb1"

# Swift drops root privileges only when it forks workers; with workers = 0
# the servers are started as the swift user instead.
if [[ $(id -u) == 0 ]]; then
  user=swift
  as_user=(setpriv --reuid=swift --regid=swift --init-groups)
  memcached_user=(-u memcache)
else
  user=$(id -un)
  as_user=()
  memcached_user=()
fi

common() {
  cat <<CONF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $1
workers = 0
user = $user
swift_dir = $etc
devices = $dir/node
mount_check = false
disable_fallocate = true
log_address = /nonexistent-dev-log
CONF
}

for server in object container account; do
  port_var=${server}_port
  {
    common "${!port_var}"
    cat <<CONF
[pipeline:main]
pipeline = $server-server
[app:$server-server]
use = egg:swift#$server
CONF
  } >"$etc/$server-server.conf"
done

proxy_conf() {
  common "$1"
  cat <<CONF
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempauth slo dlo proxy-logging proxy-server
[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
$2
[filter:tempauth]
use = egg:swift#tempauth
user_admin_admin = admin .admin .reseller_admin
user_test_tester = testing .admin
user_walrust_user = secret .admin
token_life = 86400
[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$memcached_port
[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
CONF
}
proxy_conf "$proxy_port" "" >"$etc/proxy-server.conf"
proxy_conf "$nobulk_port" "disallowed_sections = bulk_delete" >"$etc/proxy-nobulk-server.conf"

# One Python process (Debian's, which has the swift modules) builds all three rings (swift-ring-builder would start
# nine): part power 8, one replica, one device each.
/usr/bin/python3 - "$etc" "$object_port" "$container_port" "$account_port" <<'PY'
import sys
from swift.common.ring import RingBuilder
etc, ports = sys.argv[1], sys.argv[2:]
for name, port in zip(("object", "container", "account"), ports):
    builder = RingBuilder(8, 1, 1)
    builder.add_dev({"region": 1, "zone": 1, "ip": "127.0.0.1", "port": int(port),
                     "device": "sdb1", "weight": 100})
    builder.rebalance()
    builder.get_ring().save(f"{etc}/{name}.ring.gz")
PY
[[ $(id -u) == 0 ]] && chown -R swift:swift "$dir/node" "$etc"

# The servers call setsid(), leaving this process group: stop them by pid
# when this script is told to stop or exits for any other reason.
pids=()
stop() {
  trap - EXIT TERM INT HUP
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 30); do
    kill -0 "${pids[@]}" 2>/dev/null || break
    sleep 0.05
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
}
trap stop EXIT
trap 'exit 1' TERM INT HUP

memcached "${memcached_user[@]}" -l 127.0.0.1 -p "$memcached_port" -U 0 -m 64 &
pids+=($!)
for server in object container account; do
  "${as_user[@]}" swift-$server-server "$etc/$server-server.conf" -v &
  pids+=($!)
done
"${as_user[@]}" swift-proxy-server "$etc/proxy-server.conf" -v &
pids+=($!)
"${as_user[@]}" swift-proxy-server "$etc/proxy-nobulk-server.conf" -v &
pids+=($!)
echo "swift-aio: started; proxy on 127.0.0.1:$proxy_port"
# Stop as soon as any of them exits, so that a harness notices.
wait -n
echo "swift-aio: a server exited" >&2
exit 1
