#!/usr/bin/env bash
# walship vs PostgreSQL 15 with one streaming standby, side by side.
#
# 1. TPS and latency (average, p99) of the pgbench upsert script for each
#    synchronous_commit level (off, local, remote_write, on, remote_apply)
#    at each client count, against a primary with one synchronous standby
#    (synchronous_standby_names = 's1'): walship (walship init + walship
#    basebackup) and PostgreSQL 15 (initdb + pg_basebackup -R). Each cell
#    runs on both back to back, the order alternating.
# 2. Replay lag under the 8-client upsert load at synchronous_commit =
#    local: replay_lag from pg_stat_replication sampled every 100 ms on each
#    primary; median and max.
# 3. walship receive against pg_receivewal, streaming the same WAL_MB of
#    WAL (written by pgbench -i on PostgreSQL) from a slot each, twice each
#    (ours, theirs, theirs, ours; page cache dropped before each, after
#    PostgreSQL's standby has replayed that WAL and its primary has
#    checkpointed): MB/s and CPU seconds (user + system) of the receiver
#    process.
# 4. A walship standby's peak RSS (VmHWM) while it catches up CATCHUP_MB of
#    WAL written while it was stopped.
#
# Usage: benches/replication.sh   (as root -- PostgreSQL then runs as the
#                                  `postgres` user -- or as a normal user)
# Environment:
#   DURATION   seconds per pgbench run         (default 10)
#   CLIENTS    client counts                   (default "1 8 32")
#   KEYS       keys preloaded                  (default 100000)
#   WAL_MB     WAL streamed by the receivers   (default 1024)
#   CATCHUP_MB WAL the standby catches up      (default 256)
#   PGBIN      PostgreSQL 15 binaries (default /usr/lib/postgresql/15/bin)
#   WALSHIP    walship binary (default: cargo build --release)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-"1 8 32"}
KEYS=${KEYS:-100000}
WAL_MB=${WAL_MB:-1024}
CATCHUP_MB=${CATCHUP_MB:-256}
USER_NAME=bench
DB=postgres
LEVELS="off local remote_write on remote_apply"

die() { echo "replication.sh: error: $*" >&2; exit 1; }
say() { echo "== $*" >&2; }
for v in DURATION KEYS WAL_MB CATCHUP_MB; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
read -r -a CLIENT_LIST <<<"$CLIENTS"
for tool in initdb pg_ctl pg_basebackup pg_receivewal psql pgbench; do
    [[ -x $PGBIN/$tool ]] || die "missing $PGBIN/$tool"
done
[[ -x /usr/bin/time ]] || die "/usr/bin/time is needed to measure CPU seconds (apt-get install time)"
command -v ss >/dev/null || die "ss (iproute2) is needed to find free ports"
if [[ -z ${WALSHIP:-} ]]; then
    say "building walship (cargo build --release)"
    (cd "$ROOT" && cargo build --release --quiet --bin walship) || die "cargo build --release failed"
    WALSHIP=$ROOT/target/release/walship
fi
PSQL=$PGBIN/psql
PGBENCH=$PGBIN/pgbench

WORK=$(mktemp -d /tmp/walship-repl.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/pg" "$WORK/runs"
if [[ $(id -u) == 0 ]]; then
    chown postgres: "$WORK/pg"
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

PIDS=()
PG_DATAS=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    for d in "${PG_DATAS[@]}"; do as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate -w stop >/dev/null 2>&1 || true; done
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

TAKEN=" 5432 "
free_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 40000))
        [[ $TAKEN == *" $p "* ]] && continue
        if [[ -z $(ss -Htln "sport = :$p") ]]; then TAKEN+="$p "; echo "$p"; return 0; fi
    done
    die "no free TCP port"
}
sql() { local port=$1; shift; "$PSQL" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$USER_NAME" -d "$DB" "$@"; }
wait_sql() { # wait_sql PORT LOG
    for _ in $(seq 300); do
        sql "$1" -c "SELECT 1" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    cat "$2" >&2 || true
    die "server on port $1 did not start (log above)"
}
interval_ms() { awk -F: '{ if (NF == 3) printf "%.3f", ($1 * 3600 + $2 * 60 + $3) * 1000; else print "" }'; }

# ------------------------------------------------------------ walship pair
WS_P=$(free_port); WS_S=$(free_port)
say "walship: primary on $WS_P, standby s1 on $WS_S"
"$WALSHIP" init -D "$WORK/ws-p" -U "$USER_NAME" >/dev/null
echo "synchronous_standby_names = 's1'" >>"$WORK/ws-p/walship.conf"
"$WALSHIP" server -D "$WORK/ws-p" --listen "127.0.0.1:$WS_P" 2>>"$WORK/ws-p.log" &
PIDS+=($!)
wait_sql "$WS_P" "$WORK/ws-p.log"
"$WALSHIP" basebackup --from "host=127.0.0.1 port=$WS_P user=$USER_NAME" -D "$WORK/ws-s" \
    --node-name s1 --slot s1 --create-slot --no-progress >/dev/null
"$WALSHIP" server -D "$WORK/ws-s" --listen "127.0.0.1:$WS_S" 2>>"$WORK/ws-s.log" &
WS_S_PID=$!
PIDS+=($WS_S_PID)
wait_sql "$WS_S" "$WORK/ws-s.log"

# ------------------------------------------------------------ PostgreSQL pair
PG_P=$(free_port); PG_S=$(free_port)
say "PostgreSQL: primary on $PG_P, standby s1 on $PG_S"
as_pg "$PGBIN/initdb" -D "$WORK/pg/p" -U "$USER_NAME" -A trust --locale=C -E UTF8 --no-sync >/dev/null
PG_DATAS+=("$WORK/pg/p")
as_pg "$PGBIN/pg_ctl" -D "$WORK/pg/p" -w -l "$WORK/pg/p.log" \
    -o "-c listen_addresses=127.0.0.1 -c port=$PG_P -c unix_socket_directories='$WORK/pg' -c synchronous_standby_names=s1 -c max_wal_size=4GB" start >/dev/null
as_pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$PG_P" -U "$USER_NAME" -D "$WORK/pg/s" -R -X stream \
    -C -S s1 -d "host=127.0.0.1 port=$PG_P user=$USER_NAME application_name=s1" >/dev/null
PG_DATAS+=("$WORK/pg/s")
as_pg "$PGBIN/pg_ctl" -D "$WORK/pg/s" -w -l "$WORK/pg/s.log" \
    -o "-c listen_addresses=127.0.0.1 -c port=$PG_S -c unix_socket_directories='$WORK/pg'" start >/dev/null
sql "$PG_P" -c "CREATE TABLE kv (key text PRIMARY KEY, value text)"
for port in "$WS_P" "$PG_P"; do
    awk -v n="$KEYS" -v q="'" 'BEGIN { print "SET synchronous_commit = off;";
        for (i = 1; i <= n; i += 1000) { e = i + 999; if (e > n) e = n; s = "INSERT INTO kv VALUES ";
          for (k = i; k <= e; k++) s = s (k > i ? "," : "") "(" q k q "," q "v" q ")";
          print s " ON CONFLICT (key) DO UPDATE SET value = excluded.value;" } }' | sql "$port" -f - >/dev/null
done
for port in "$WS_P" "$PG_P"; do
    for _ in $(seq 100); do
        [[ $(sql "$port" -c "SELECT sync_state FROM pg_stat_replication") == sync ]] && break
        sleep 0.1
    done
    [[ $(sql "$port" -c "SELECT sync_state FROM pg_stat_replication") == sync ]] || die "standby of $port is not synchronous"
done
cat >"$WORK/upsert.sql" <<EOF
\\set k random(1, $KEYS)
INSERT INTO kv VALUES (:k, 'v') ON CONFLICT (key) DO UPDATE SET value = excluded.value;
EOF

declare -A RES=()
run_bench() { # run_bench SYSTEM PORT LEVEL CLIENTS
    local system=$1 port=$2 level=$3 c=$4 out tps lat dir
    dir=$WORK/runs/$system.$level.$c
    mkdir -p "$dir"
    out=$(PGOPTIONS="-c synchronous_commit=$level" "$PGBENCH" -n -h 127.0.0.1 -p "$port" -U "$USER_NAME" \
        -f "$WORK/upsert.sql" -M prepared -c "$c" -j $((c < 2 ? c : 2)) -T "$DURATION" -l --log-prefix="$dir/log" "$DB" 2>&1) \
        || { echo "$out" >&2; die "pgbench failed on $system"; }
    tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' <<<"$out")
    lat=$(cat "$dir"/log.* | awk '{ print $3 }' | sort -n | awk '{ v[NR] = $1; s += $1 }
        END { i = int(NR * 0.99); if (i < 1) i = 1; printf "%.3f %.3f", s / NR / 1000, v[i] / 1000 }')
    rm -rf "$dir"
    RES["$system|$level|$c"]="$tps $lat"
    printf '   %-8s sc=%-12s c=%-3s tps=%-10s avg/p99 ms=%s\n' "$system" "$level" "$c" "$tps" "$lat" >&2
}
CELL=0
for level in $LEVELS; do
    for c in "${CLIENT_LIST[@]}"; do
        if ((CELL++ % 2 == 0)); then
            run_bench walship "$WS_P" "$level" "$c"; run_bench pg "$PG_P" "$level" "$c"
        else
            run_bench pg "$PG_P" "$level" "$c"; run_bench walship "$WS_P" "$level" "$c"
        fi
    done
done

# ------------------------------------------------------------ replay lag
lag_run() { # lag_run SYSTEM PORT -> "median max" (ms)
    local system=$1 port=$2 samples=$WORK/lag.$1
    : >"$samples"
    PGOPTIONS="-c synchronous_commit=local" "$PGBENCH" -n -h 127.0.0.1 -p "$port" -U "$USER_NAME" \
        -f "$WORK/upsert.sql" -M prepared -c 8 -j 2 -T "$DURATION" "$DB" >/dev/null 2>&1 &
    local bench=$!
    while kill -0 "$bench" 2>/dev/null; do
        sql "$port" -c "SELECT replay_lag FROM pg_stat_replication" 2>/dev/null | interval_ms >>"$samples" || true
        echo >>"$samples"
        sleep 0.1
    done
    wait "$bench" || die "pgbench (lag run) failed on $system"
    # An empty sample (NULL: nothing to replay) counts as zero lag.
    awk 'NF == 0 { $1 = 0 } { print $1 + 0 }' "$samples" | sort -n | awk '{ v[NR] = $1 }
        END { printf "%.3f %.3f", v[int((NR + 1) / 2)], v[NR] }'
}
say "replay lag under 8 clients, synchronous_commit = local"
WS_LAG=$(lag_run walship "$WS_P")
PG_LAG=$(lag_run pg "$PG_P")

# ------------------------------------------------------------ receivers
say "generating ~$WAL_MB MB of WAL on PostgreSQL for the receivers"
for run in 1 2; do
    sql "$PG_P" -c "SELECT pg_create_physical_replication_slot('rw_theirs$run', true)" \
        -c "SELECT pg_create_physical_replication_slot('rw_ours$run', true)" >/dev/null
done
START_LSN=$(sql "$PG_P" -c "SELECT pg_current_wal_lsn()")
SCALE=$((WAL_MB / 15 + 1))
PGOPTIONS="-c synchronous_commit=off" "$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_P" -U "$USER_NAME" "$DB" >/dev/null 2>&1
sql "$PG_P" -c "SELECT pg_switch_wal()" >/dev/null
END_LSN=$(sql "$PG_P" -c "SELECT pg_current_wal_flush_lsn()")
BYTES=$(sql "$PG_P" -c "SELECT pg_wal_lsn_diff('$END_LSN', '$START_LSN')")
receiver() { # receiver NAME CMD... -> "seconds cpu_seconds"
    local name=$1; shift
    /usr/bin/time -f "%e %U %S" -o "$WORK/time.$name" "$@" >/dev/null 2>"$WORK/recv.$name.log" \
        || { cat "$WORK/recv.$name.log" >&2; die "$name failed"; }
    awk '{ printf "%s %.2f", $1, $2 + $3 }' "$WORK/time.$name"
}
# PostgreSQL's standby replays the same WAL, and the primary writes back
# what pgbench -i dirtied: let both finish first, so that neither competes
# with the receivers (they did in earlier runs, by up to 4x in CPU).
sql "$PG_P" -c "CHECKPOINT" >/dev/null
for _ in $(seq 1200); do
    [[ $(sql "$PG_P" -c "SELECT count(*) FROM pg_stat_replication WHERE replay_lsn >= '$END_LSN'") -ge 1 ]] && break
    sleep 0.5
done
theirs() { # theirs RUN
    mkdir -p "$WORK/rw-theirs$1"
    sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    receiver pg_receivewal "$PGBIN/pg_receivewal" -h 127.0.0.1 -p "$PG_P" -U "$USER_NAME" \
        -D "$WORK/rw-theirs$1" -S "rw_theirs$1" -E "$END_LSN" -n
}
ours() { # ours RUN
    mkdir -p "$WORK/rw-ours$1"
    sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    receiver walship-receive "$WALSHIP" receive --from "host=127.0.0.1 port=$PG_P user=$USER_NAME" \
        -D "$WORK/rw-ours$1" --slot "rw_ours$1" --endpos "$END_LSN" --no-loop
}
# Twice each, in the order ours, theirs, theirs, ours.
OURS1=$(ours 1); THEIRS1=$(theirs 1); THEIRS2=$(theirs 2); OURS2=$(ours 2)
SAME=yes
for f in "$WORK"/rw-theirs1/0*; do
    [[ ${#f} -gt 0 && $(basename "$f") != *.partial ]] || continue
    cmp -s "$f" "$WORK/rw-ours1/$(basename "$f")" || SAME=no
    cmp -s "$f" "$WORK/rw-ours2/$(basename "$f")" || SAME=no
done

# ------------------------------------------------------------ standby catch-up RSS
say "walship standby catch-up of ~$CATCHUP_MB MB"
kill -TERM "$WS_S_PID"; wait "$WS_S_PID" 2>/dev/null || true
rows=$((CATCHUP_MB * 1024 / 9))
awk -v n="$rows" -v q="'" 'BEGIN { print "SET synchronous_commit = local;";
    v = "0123456789abcdef"; while (length(v) < 8000) v = v v;
    for (i = 1; i <= n; i += 100) { s = "INSERT INTO kv VALUES "; e = i + 99; if (e > n) e = n;
      for (k = i; k <= e; k++) s = s (k > i ? "," : "") "(" q "big" k q "," q v q ")";
      print s " ON CONFLICT (key) DO UPDATE SET value = excluded.value;" } }' \
    | sql "$WS_P" -f - >/dev/null
TARGET=$(sql "$WS_P" -c "SELECT pg_current_wal_flush_lsn()")
t0=$(date +%s.%N)
"$WALSHIP" server -D "$WORK/ws-s" --listen "127.0.0.1:$WS_S" 2>>"$WORK/ws-s.log" &
WS_S_PID=$!
PIDS+=($WS_S_PID)
wait_sql "$WS_S" "$WORK/ws-s.log"
sql "$WS_S" -c "WAIT FOR LSN '$TARGET' WITH (TIMEOUT '600s')" >/dev/null
CATCHUP_S=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
HWM=$(awk '$1 == "VmHWM:" { printf "%.1f", $2 / 1024 }' "/proc/$WS_S_PID/status")

# ------------------------------------------------------------ report
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else print "-" }'; }
f() { awk -v i="$2" '{ print $i }' <<<"${RES[$1]}"; }
echo
echo "walship $(git -C "$ROOT" rev-parse --short HEAD) vs PostgreSQL $(sql "$PG_P" -c 'SHOW server_version'); $(nproc) CPUs; DURATION=${DURATION}s; one synchronous standby (s1) each, same machine"
echo
printf '| %-13s | %7s | %11s | %9s | %6s | %18s | %18s |\n' synchronous_commit clients "walship TPS" "PG TPS" ratio "walship avg/p99 ms" "PG avg/p99 ms"
echo "|---|--:|--:|--:|--:|--:|--:|"
for level in $LEVELS; do
    for c in "${CLIENT_LIST[@]}"; do
        w="walship|$level|$c"; p="pg|$level|$c"
        printf '| %-13s | %7s | %11.0f | %9.0f | %6s | %18s | %18s |\n' "$level" "$c" "$(f "$w" 1)" "$(f "$p" 1)" \
            "$(ratio "$(f "$w" 1)" "$(f "$p" 1)")" "$(f "$w" 2) / $(f "$w" 3)" "$(f "$p" 2) / $(f "$p" 3)"
    done
done
echo
read -r wm wx <<<"$WS_LAG"; read -r pm px <<<"$PG_LAG"
echo "replay lag, 8 clients, synchronous_commit = local: walship median $wm ms, max $wx ms; PostgreSQL median $pm ms, max $px ms"
mb=$(awk -v b="$BYTES" 'BEGIN { printf "%.0f", b / 1048576 }')
rate() { awk -v m="$mb" -v s="$1" 'BEGIN { printf "%.1f", m / s }'; }
read -r ts1 tc1 <<<"$THEIRS1"; read -r ts2 tc2 <<<"$THEIRS2"
read -r os1 oc1 <<<"$OURS1"; read -r os2 oc2 <<<"$OURS2"
tc=$(awk -v a="$tc1" -v b="$tc2" 'BEGIN { print a + b }'); oc=$(awk -v a="$oc1" -v b="$oc2" 'BEGIN { print a + b }')
echo "receivers, $mb MB of WAL from PostgreSQL, two runs each: pg_receivewal $(rate "$ts1") and $(rate "$ts2") MB/s, $tc1 and $tc2 CPU s;" \
    "walship receive $(rate "$os1") and $(rate "$os2") MB/s, $oc1 and $oc2 CPU s (CPU ratio of the sums $(ratio "$oc" "$tc")); segments identical: $SAME"
echo "walship standby catch-up of ~$CATCHUP_MB MB of WAL: ${CATCHUP_S} s, peak RSS (VmHWM) $HWM MB"
