#!/usr/bin/env bash
# Promotion time: walship against PostgreSQL 15, side by side.
#
# 1. Planned: the primary is up; from the moment `walship promote -D s1
#    --wait` (which fences the primary over the protocol first) or
#    `pg_ctl promote -w` starts, to the first INSERT the promoted standby
#    accepts (a client retrying every 10 ms).
# 2. Failover: the primary is killed (SIGKILL); a heartbeat loop asks it
#    `SELECT 1` every 200 ms and declares it dead after HEARTBEAT_MS without
#    an answer, then promotes (walship: --fence-command proving the old
#    primary is gone; PostgreSQL: pg_ctl promote, which fences nothing);
#    from the kill to the first accepted INSERT.
#
# Each measurement runs on a fresh pair (init, base backup, standby
# streaming), ROUNDS times, the order alternating; medians are printed.
#
# Usage: benches/promote.sh   (as root -- PostgreSQL then runs as the
#                              `postgres` user -- or as a normal user)
# Environment:
#   ROUNDS        measurements per cell           (default 5)
#   HEARTBEAT_MS  heartbeat timeout               (default 2000)
#   PGBIN         PostgreSQL 15 binaries (default /usr/lib/postgresql/15/bin)
#   WALSHIP       walship binary (default: cargo build --release)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
ROUNDS=${ROUNDS:-5}
HEARTBEAT_MS=${HEARTBEAT_MS:-2000}
USER_NAME=bench
DB=postgres

die() { echo "promote.sh: error: $*" >&2; exit 1; }
say() { echo "== $*" >&2; }
for v in ROUNDS HEARTBEAT_MS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
for tool in initdb pg_ctl pg_basebackup psql; do
    [[ -x $PGBIN/$tool ]] || die "missing $PGBIN/$tool"
done
command -v ss >/dev/null || die "ss (iproute2) is needed to find free ports"
if [[ -z ${WALSHIP:-} ]]; then
    say "building walship (cargo build --release)"
    (cd "$ROOT" && cargo build --release --quiet --bin walship) || die "cargo build --release failed"
    WALSHIP=$ROOT/target/release/walship
fi
PSQL=$PGBIN/psql

WORK=$(mktemp -d /tmp/walship-promote.XXXXXX)
chmod 755 "$WORK"
if [[ $(id -u) == 0 ]]; then
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

PIDS=()
PG_DATAS=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    for d in "${PG_DATAS[@]}"; do as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate -w stop >/dev/null 2>&1 || true; done
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 40000))
        if [[ -z $(ss -Htln "sport = :$p") ]]; then echo "$p"; return 0; fi
    done
    die "no free TCP port"
}
now_ms() { date +%s%3N; }
sql() { local port=$1; shift; "$PSQL" -X -q -At -h 127.0.0.1 -p "$port" -U "$USER_NAME" -d "$DB" "$@"; }
wait_sql() {
    for _ in $(seq 300); do
        sql "$1" -c "SELECT 1" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "server on port $1 did not start"
}
# Retries an INSERT every 10 ms until the server at PORT accepts one.
first_write() {
    for _ in $(seq 6000); do
        sql "$1" -c "INSERT INTO kv VALUES ('after-$RANDOM$RANDOM', 'promoted')" >/dev/null 2>&1 && return 0
        sleep 0.01
    done
    die "the promoted standby on port $1 never accepted a write"
}
# Blocks until the primary on PORT has missed HEARTBEAT_MS of heartbeats.
detect_death() {
    local last; last=$(now_ms)
    while :; do
        if PGCONNECT_TIMEOUT=1 sql "$1" -c "SELECT 1" >/dev/null 2>&1; then last=$(now_ms); fi
        (( $(now_ms) - last >= HEARTBEAT_MS )) && return 0
        sleep 0.2
    done
}

# Sets P_PORT S_PORT P_PID S_DIR for a fresh walship pair.
ws_pair() {
    local d=$WORK/ws.$1
    P_PORT=$(free_port); S_PORT=$(free_port); S_DIR=$d/s
    "$WALSHIP" init -D "$d/p" -U "$USER_NAME" >/dev/null
    "$WALSHIP" server -D "$d/p" --listen "127.0.0.1:$P_PORT" 2>>"$d.p.log" &
    P_PID=$!; PIDS+=("$P_PID")
    wait_sql "$P_PORT"
    "$WALSHIP" basebackup --from "host=127.0.0.1 port=$P_PORT user=$USER_NAME" -D "$S_DIR" \
        --node-name s1 --no-progress >/dev/null
    "$WALSHIP" server -D "$S_DIR" --listen "127.0.0.1:$S_PORT" 2>>"$d.s.log" &
    PIDS+=($!)
    wait_sql "$S_PORT"
    sql "$P_PORT" -c "INSERT INTO kv VALUES ('before', 'promotion')" >/dev/null
    sleep 0.3
}

# The same for PostgreSQL 15.
pg_pair() {
    local d=$WORK/pg.$1
    mkdir -p "$d"; [[ $(id -u) == 0 ]] && chown postgres: "$d"
    P_PORT=$(free_port); S_PORT=$(free_port); S_DIR=$d/s
    as_pg "$PGBIN/initdb" -D "$d/p" -U "$USER_NAME" -A trust --no-sync >/dev/null
    PG_DATAS+=("$d/p")
    as_pg "$PGBIN/pg_ctl" -D "$d/p" -w -l "$d/p.log" \
        -o "-c listen_addresses=127.0.0.1 -c port=$P_PORT -c unix_socket_directories='$d'" start >/dev/null
    P_PID=$(as_pg head -1 "$d/p/postmaster.pid")
    sql "$P_PORT" -c "CREATE TABLE kv (key text PRIMARY KEY, value text)" >/dev/null
    as_pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$P_PORT" -U "$USER_NAME" -D "$S_DIR" -R -X stream >/dev/null
    PG_DATAS+=("$S_DIR")
    as_pg "$PGBIN/pg_ctl" -D "$S_DIR" -w -l "$d/s.log" \
        -o "-c listen_addresses=127.0.0.1 -c port=$S_PORT -c unix_socket_directories='$d'" start >/dev/null
    sql "$P_PORT" -c "INSERT INTO kv VALUES ('before', 'promotion')" >/dev/null
    sleep 0.3
}

promote_ws_planned() {
    "$WALSHIP" promote -D "$S_DIR" --wait >/dev/null
}
promote_ws_failover() {
    "$WALSHIP" promote -D "$S_DIR" --fence-command "! kill -0 $P_PID 2>/dev/null" --wait >/dev/null
}
promote_pg() {
    as_pg "$PGBIN/pg_ctl" -D "$S_DIR" -w promote >/dev/null
}

declare -A RESULTS
measure() { # measure SYSTEM CASE ROUND
    local system=$1 case=$2 round=$3 t0 t1
    "${system}_pair" "$case.$round"
    if [[ $case == planned ]]; then
        t0=$(now_ms)
        if [[ $system == ws ]]; then promote_ws_planned; else promote_pg; fi
    else
        t0=$(now_ms)
        kill -KILL "$P_PID"
        detect_death "$P_PORT"
        if [[ $system == ws ]]; then promote_ws_failover; else promote_pg; fi
    fi
    first_write "$S_PORT"
    t1=$(now_ms)
    RESULTS[$system.$case]+="$((t1 - t0)) "
    say "$system $case round $round: $((t1 - t0)) ms"
}
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

for round in $(seq "$ROUNDS"); do
    for case in planned failover; do
        if (( round % 2 )); then order="ws pg"; else order="pg ws"; fi
        for system in $order; do measure "$system" "$case" "$round"; done
    done
done

echo
echo "Promotion to first accepted write, median of $ROUNDS (ms); heartbeat timeout $HEARTBEAT_MS ms:"
printf '| %-44s | %9s | %9s | %6s |\n' case walship "PG 15" ratio
printf '|---|--:|--:|--:|\n'
for case in planned failover; do
    ws=$(echo "${RESULTS[ws.$case]}" | median); pg=$(echo "${RESULTS[pg.$case]}" | median)
    label=$([[ $case == planned ]] && echo "walship promote --wait / pg_ctl promote -w" || echo "SIGKILL -> heartbeat timeout -> promote")
    printf '| %-44s | %9s | %9s | %6.2f |\n' "$label" "$ws" "$pg" "$(awk -v a="$ws" -v b="$pg" 'BEGIN { print a / b }')"
done
echo "raw: walship planned ${RESULTS[ws.planned]}; PG planned ${RESULTS[pg.planned]}"
echo "raw: walship failover ${RESULTS[ws.failover]}; PG failover ${RESULTS[pg.failover]}"
