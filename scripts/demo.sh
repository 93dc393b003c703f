#!/usr/bin/env bash
# `just demo`: the main job end to end on the embedded default, a file://
# store. A scratch PostgreSQL cluster archives its WAL with `wal-e wal-push`,
# is backed up with `wal-e backup-push` while pgbench writes, keeps writing,
# and is then restored with `wal-e backup-fetch LATEST` into a new data
# directory and recovered to a point in time with `wal-e wal-fetch`.
set -euo pipefail

PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
target_dir=${CARGO_TARGET_DIR:-$(pwd)/target}
bin="$target_dir/debug/wal-e"
[[ -x $bin ]] || { echo "demo: $bin is missing; run 'cargo build' first" >&2; exit 1; }

work=$(mktemp -d /tmp/wal-e-demo.XXXXXX)
chmod 755 "$work"
store="$work/store"
primary="$work/primary"
restored="$work/restored"
sock="$work/sock"
mkdir -p "$store" "$sock"

as_pg() {
  if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}
[[ $(id -u) == 0 ]] && chown -R postgres: "$work"
psql_at() { "$PG_BINDIR/psql" -X -A -t -q -v ON_ERROR_STOP=1 -h "$sock" -p "$1" -U postgres -d postgres -c "$2"; }
cleanup() {
  as_pg "$PG_BINDIR/pg_ctl" -D "$restored" -m immediate stop >/dev/null 2>&1 || true
  as_pg "$PG_BINDIR/pg_ctl" -D "$primary" -m immediate stop >/dev/null 2>&1 || true
  if [[ ${KEEP:-0} == 1 ]]; then echo "demo: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }

wal_e="env WALE_FILE_PREFIX=file://localhost$store WALE_LOG_DESTINATION=stderr $bin"
export WALE_FILE_PREFIX=file://localhost$store WALE_LOG_DESTINATION=stderr
export PGHOST=$sock PGPORT=5491 PGUSER=postgres

step "scratch PostgreSQL cluster archiving to file://localhost$store"
as_pg "$PG_BINDIR/initdb" -D "$primary" -U postgres --auth=trust --no-instructions >/dev/null
cat >> "$primary/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$sock'
port = 5491
wal_level = replica
archive_mode = on
archive_command = '$wal_e wal-push %p'
CONF
as_pg "$PG_BINDIR/pg_ctl" -D "$primary" -l "$work/primary.log" -w start >/dev/null

step "pgbench load"
"$PG_BINDIR/pgbench" -h "$sock" -p 5491 -U postgres -i -s 5 -q postgres 2>&1 | tail -1
"$PG_BINDIR/pgbench" -h "$sock" -p 5491 -U postgres -c 2 -t 500 postgres | grep -E "^(tps|number of transactions actually)"

step "wal-e backup-push while pgbench runs"
"$PG_BINDIR/pgbench" -h "$sock" -p 5491 -U postgres -c 2 -t 1000 postgres >/dev/null &
load=$!
psql_at 5491 "CHECKPOINT"
"$bin" --terse backup-push "$primary"
wait "$load"
"$bin" --terse backup-list

step "more writes, and a recovery target between two of them"
psql_at 5491 "CREATE TABLE demo_marker (note text, at timestamptz DEFAULT clock_timestamp())"
psql_at 5491 "INSERT INTO demo_marker (note) VALUES ('before the target')"
"$PG_BINDIR/pgbench" -h "$sock" -p 5491 -U postgres -c 2 -t 200 postgres >/dev/null
target=$(psql_at 5491 "SELECT clock_timestamp()")
psql_at 5491 "INSERT INTO demo_marker (note) VALUES ('after the target')"
balance=$(psql_at 5491 "SELECT sum(abalance) FROM pgbench_accounts")
last=$(psql_at 5491 "SELECT pg_walfile_name(pg_switch_wal())")
for _ in $(seq 600); do
  archived=$(psql_at 5491 "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
  [[ ${archived:0:24} > $last || ${archived:0:24} == "$last" ]] && break
  sleep 0.1
done
echo "target time: $target; archived up to $archived"
as_pg "$PG_BINDIR/pg_ctl" -D "$primary" -m fast -w stop >/dev/null
echo "store holds $(find "$store" -type f | wc -l) objects, $(du -sh "$store" | cut -f1)"

step "wal-e backup-fetch LATEST, then point-in-time recovery with wal-e wal-fetch"
"$bin" --terse backup-fetch "$restored" LATEST
# Configuration files are not part of a backup, as with WAL-E.
cp "$primary"/{postgresql.conf,pg_hba.conf,pg_ident.conf} "$restored"/
[[ $(id -u) == 0 ]] && chown -R postgres: "$restored"
cat >> "$restored/postgresql.conf" <<CONF
port = 5492
archive_mode = off
restore_command = '$wal_e wal-fetch "%f" "%p"'
recovery_target_time = '$target'
recovery_target_action = 'promote'
CONF
as_pg touch "$restored/recovery.signal"
as_pg "$PG_BINDIR/pg_ctl" -D "$restored" -l "$work/restored.log" -w start >/dev/null
for _ in $(seq 600); do
  [[ $(psql_at 5492 "SELECT pg_is_in_recovery()") == f ]] && break
  sleep 0.1
done

step "verification"
notes=$(psql_at 5492 "SELECT string_agg(note, ',' ORDER BY at) FROM demo_marker")
accounts=$(psql_at 5492 "SELECT count(*) FROM pgbench_accounts")
fetched=$(grep -c "complete wal restore" "$work/restored.log" || true)
echo "rows in demo_marker: $notes"
echo "pgbench_accounts rows: $accounts"
echo "WAL files restored by wal-e wal-fetch: $fetched"
[[ $notes == "before the target" ]] || { echo "demo: FAILED: expected only the row before the target" >&2; exit 1; }
[[ $accounts == 500000 ]] || { echo "demo: FAILED: pgbench_accounts has $accounts rows" >&2; exit 1; }
(( fetched > 0 )) || { echo "demo: FAILED: nothing came through wal-fetch" >&2; exit 1; }
echo "(the balance at the end of the archive was $balance; recovery stopped before that, as asked)"
echo
echo "demo: OK: archived with wal-push, backed up with backup-push, restored with backup-fetch, recovered to $target with wal-fetch"
