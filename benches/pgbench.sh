#!/usr/bin/env bash
# walship vs PostgreSQL 15 under pgbench, side by side, on this machine.
#
# What it does (one run; both servers on the same filesystem):
#   1. builds walship (`cargo build --release`) unless WALSHIP is given,
#   2. runs `pg_test_fsync -s 2` in the walship data directory's filesystem
#      and keeps the fdatasync ops/sec for one 8kB write: the physical limit
#      of a single client committing with synchronous_commit on/local (and
#      runs it again just before and just after each one-client `local`
#      cell, whose TPS is compared with the mean of that pair),
#   3. starts walship (`walship init`, `walship server --listen
#      127.0.0.1:PORT`) and PostgreSQL 15 (initdb: C locale, trust auth,
#      otherwise default settings; the same table `kv (key text primary key,
#      value text)`), and preloads KEYS keys into both (multi-row INSERT ...
#      ON CONFLICT, 1000 rows per statement, through psql),
#   4. for synchronous_commit in local and off (walship: walship.conf +
#      SIGHUP, checked with SHOW; PostgreSQL: `on` -- which equals local
#      without standbys -- or `off` per pgbench session via PGOPTIONS), for
#      -M prepared and -M simple, for each client count: the upsert script;
#      then point reads (-M prepared) at each client count. Each cell runs
#      on walship and on PostgreSQL back to back, the order alternating
#      from cell to cell and the other server idle, so that drift in the
#      disk's fsync speed or in background load (large on a shared VM) hits
#      both alike. Then records the walship server's VmHWM/VmRSS and stops
#      both servers,
#   5. optionally (RSS_1M=1) a fresh walship node loaded with RSS_KEYS keys
#      (1,000,000) in batches, and its peak RSS (VmHWM from /proc/PID/status),
#   6. prints one table plus the fdatasync line and the RSS lines.
#
# Every pgbench run is `pgbench -n -c N -j min(N,2) -T DURATION -l`; TPS is
# pgbench's "tps = ... (without initial connection time)"; average and p99
# latency come from the per-transaction log (3rd field, microseconds) of all
# of the run's threads.
#
# Both servers and temp dirs are stopped/removed on exit, failure or Ctrl-C.
# If a server cannot be started the script stops with a message and a
# non-zero status. If a pgbench run fails (client aborted, failed
# transactions) its output and the tail of that server's log are printed,
# the table shows ERR for it, and the script exits 1 after the table.
#
# Usage: benches/pgbench.sh        (as root -- PostgreSQL then runs as the
#                                   `postgres` user -- or as a normal user)
# Environment:
#   DURATION   seconds per pgbench run                 (default 10)
#   CLIENTS    client counts                           (default "1 8 32")
#   KEYS       keys preloaded and used by the scripts  (default 100000)
#   RSS_1M     1: measure walship's peak RSS with RSS_KEYS keys (default 1)
#   RSS_KEYS   keys for that measurement               (default 1000000)
#   PGBIN      PostgreSQL 15 binaries   (default /usr/lib/postgresql/15/bin)
#   WALSHIP    walship binary           (default: cargo build --release, then
#                                        target/release/walship)
#   KEEP_LOGS  a directory to copy the server logs into before the temp dir
#              is removed (default: none)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-"1 8 32"}
KEYS=${KEYS:-100000}
RSS_1M=${RSS_1M:-1}
RSS_KEYS=${RSS_KEYS:-1000000}
KEEP_LOGS=${KEEP_LOGS:-}
BATCH=1000
USER_NAME=bench
DB=postgres

die() { echo "pgbench.sh: error: $*" >&2; exit 1; }
show() { # print a file (a log) to stderr if it exists
    if [[ -f $1 ]]; then cat "$1" >&2 || true; fi
}
say() { echo "== $*" >&2; }

[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer (seconds), got '$DURATION'"
[[ $KEYS =~ ^[1-9][0-9]*$ ]] || die "KEYS must be a positive integer, got '$KEYS'"
[[ $RSS_KEYS =~ ^[1-9][0-9]*$ ]] || die "RSS_KEYS must be a positive integer, got '$RSS_KEYS'"
read -r -a CLIENT_LIST <<<"$CLIENTS"
((${#CLIENT_LIST[@]} > 0)) || die "CLIENTS is empty"
for c in "${CLIENT_LIST[@]}"; do
    [[ $c =~ ^[1-9][0-9]*$ ]] || die "CLIENTS must be positive integers, got '$c'"
done
for tool in initdb pg_ctl postgres psql pgbench pg_test_fsync; do
    [[ -x $PGBIN/$tool ]] || die "missing $PGBIN/$tool"
done
command -v ss >/dev/null || die "ss (iproute2) is needed to find free ports"

if [[ -z ${WALSHIP:-} ]]; then
    say "building walship (cargo build --release)"
    (cd "$ROOT" && cargo build --release --quiet --bin walship) || die "cargo build --release failed"
    WALSHIP=$ROOT/target/release/walship
fi
[[ -x $WALSHIP ]] || die "walship binary $WALSHIP not found"

PSQL=$PGBIN/psql
PGBENCH=$PGBIN/pgbench

WORK=$(mktemp -d /tmp/walship-pgbench.XXXXXX)
chmod 755 "$WORK"
WS_DATA=$WORK/walship
WS_LOG=$WORK/walship.log
RSS_DATA=$WORK/walship-rss
RSS_LOG=$WORK/walship-rss.log
PG_DIR=$WORK/pg
PG_DATA=$PG_DIR/data
PG_LOG=$PG_DIR/server.log
SCRIPTS=$WORK/scripts
RUNS=$WORK/runs
mkdir -p "$PG_DIR" "$SCRIPTS" "$RUNS"
if [[ $(id -u) == 0 ]]; then
    # PostgreSQL refuses to run as root.
    chown postgres: "$PG_DIR"
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

ws_pid=""        # the walship server running now, if any
pg_running=0

stop_walship() {
    [[ -n $ws_pid ]] || return 0
    if kill -0 "$ws_pid" 2>/dev/null; then
        kill -TERM "$ws_pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$ws_pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$ws_pid" 2>/dev/null; then
            echo "pgbench.sh: walship (pid $ws_pid) ignored SIGTERM for 10 s; killing it" >&2
            kill -KILL "$ws_pid" 2>/dev/null || true
        fi
    fi
    wait "$ws_pid" 2>/dev/null || true
    ws_pid=""
}

stop_pg() {
    ((pg_running)) || return 0
    as_pg "$PGBIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop >/dev/null 2>&1 \
        || as_pg "$PGBIN/pg_ctl" -D "$PG_DATA" -m immediate -w stop >/dev/null 2>&1 || true
    pg_running=0
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_walship
    stop_pg
    if [[ -n $KEEP_LOGS ]]; then
        if mkdir -p "$KEEP_LOGS"; then
            cp -f "$WS_LOG" "$RSS_LOG" "$PG_LOG" "$KEEP_LOGS"/ 2>/dev/null || true
        fi
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A TCP port on 127.0.0.1 that nothing listens on (and not one taken already).
TAKEN_PORTS=" 5432 "
free_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 40000))
        [[ $TAKEN_PORTS == *" $p "* ]] && continue
        if [[ -z $(ss -Htln "sport = :$p") ]]; then
            TAKEN_PORTS+="$p "
            echo "$p"
            return 0
        fi
    done
    die "no free TCP port found"
}

# psql against 127.0.0.1:PORT, stop at the first error.
sql() {
    local port=$1
    shift
    "$PSQL" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$USER_NAME" -d "$DB" "$@"
}

# The preload: N keys '1'..'N' in multi-row upserts of BATCH rows each.
preload_sql() {
    awk -v n="$1" -v b="$BATCH" -v q="'" 'BEGIN {
        print "SET synchronous_commit = off;"
        for (i = 1; i <= n; i += b) {
            e = i + b - 1; if (e > n) e = n
            s = "INSERT INTO kv VALUES "
            for (k = i; k <= e; k++) s = s (k > i ? "," : "") "(" q k q "," q "v" q ")"
            print s " ON CONFLICT (key) DO UPDATE SET value = excluded.value;"
        }
    }'
}

preload() {
    local port=$1 n=$2 what=$3 t0
    t0=$(date +%s.%N)
    preload_sql "$n" | sql "$port" -f - >/dev/null || die "$what: preload of $n keys failed"
    local got
    got=$(sql "$port" -c "SELECT value FROM kv WHERE key = CAST($n AS text)") \
        || die "$what: reading back key $n failed"
    [[ $got == v ]] || die "$what: key $n not found after the preload (got '$got')"
    say "$what: preloaded $n keys in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}') s"
}

cat >"$SCRIPTS/upsert.sql" <<EOF
\\set k random(1, $KEYS)
INSERT INTO kv VALUES (:k, 'v') ON CONFLICT (key) DO UPDATE SET value = excluded.value;
EOF
cat >"$SCRIPTS/read.sql" <<EOF
\\set k random(1, $KEYS)
SELECT value FROM kv WHERE key = CAST(:k AS text);
EOF

# Results: RES[system|workload|mode|clients] = "tps avg_ms p99_ms" or "ERR".
declare -A RES=()
FAILURES=0

# run_bench SYSTEM PORT LOG WORKLOAD SCRIPT MODE CLIENTS [PGOPTIONS]
run_bench() {
    local system=$1 port=$2 log=$3 workload=$4 script=$5 mode=$6 clients=$7 pgopts=${8:-}
    local jobs=$((clients < 2 ? clients : 2))
    local dir=$RUNS/$system.$workload.$mode.$clients
    local key="$system|$workload|$mode|$clients"
    local out rc=0 tps failed lat
    mkdir -p "$dir"
    out=$(PGOPTIONS=$pgopts "$PGBENCH" -n -h 127.0.0.1 -p "$port" -U "$USER_NAME" \
        -f "$script" -M "$mode" -c "$clients" -j "$jobs" -T "$DURATION" \
        -l --log-prefix="$dir/log" "$DB" 2>&1) || rc=$?
    ((rc < 128)) || exit "$rc" # pgbench killed by a signal (Ctrl-C): stop here
    tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' <<<"$out")
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out")
    if ((rc != 0)) || [[ -z $tps ]] || [[ ${failed:-0} != 0 ]]; then
        RES[$key]=ERR
        FAILURES=$((FAILURES + 1))
        {
            echo "pgbench.sh: $system $workload -M $mode -c $clients FAILED (pgbench exit $rc, failed transactions: ${failed:-?})"
            echo "---- pgbench output"
            echo "$out"
            echo "---- last 40 lines of the $system server log ($log)"
            tail -n 40 "$log" 2>/dev/null || true
            echo "----"
        } >&2
        rm -rf "$dir"
        return 0
    fi
    # Latency (µs, 3rd field) of every completed transaction, all threads.
    lat=$({ cat "$dir"/log.* 2>/dev/null || true; } | awk '$3 ~ /^[0-9]+$/ { print $3 }' | sort -n | awk '
        { v[NR] = $1; s += $1 }
        END {
            if (NR == 0) { print "NA NA"; exit }
            i = int(NR * 0.99); if (i < NR * 0.99) i++; if (i < 1) i = 1
            printf "%.3f %.3f", s / NR / 1000, v[i] / 1000
        }')
    RES[$key]="$tps $lat"
    rm -rf "$dir"
    printf '   %-8s %-13s %-8s c=%-3s tps=%-10s avg/p99 ms=%s\n' "$system" "$workload" "$mode" "$clients" "$tps" "$lat" >&2
}

# ---------------------------------------------------------------- walship
start_walship() {
    local data=$1 port=$2 log=$3
    "$WALSHIP" server -D "$data" --listen "127.0.0.1:$port" 2>>"$log" &
    ws_pid=$!
    for _ in $(seq 300); do
        if ! kill -0 "$ws_pid" 2>/dev/null; then
            wait "$ws_pid" 2>/dev/null || true
            ws_pid=""
            show "$log"
            die "walship server exited during startup (log above)"
        fi
        if grep -q "listening" "$log" && sql "$port" -c "SHOW synchronous_commit" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    show "$log"
    die "walship server did not accept connections on 127.0.0.1:$port within 30 s (log above)"
}

init_walship() {
    local data=$1
    "$WALSHIP" init -D "$data" -U "$USER_NAME" >"$WORK/walship-init.log" 2>&1 \
        || { show "$WORK/walship-init.log"; die "walship init -D $data failed"; }
}

vm_kb() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$2/status"; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

WS_PORT=$(free_port)
WS_SYNC=""
ws_set_sync() {
    local want=$1 got
    if [[ $WS_SYNC != "$want" ]]; then
        echo "synchronous_commit = $want" >>"$WS_DATA/walship.conf"
        kill -HUP "$ws_pid"
        for _ in $(seq 50); do
            got=$(sql "$WS_PORT" -c "SHOW synchronous_commit") || die "walship: SHOW synchronous_commit failed"
            [[ $got == "$want" ]] && break
            sleep 0.1
        done
        [[ $got == "$want" ]] || die "walship: synchronous_commit is '$got' after SIGHUP, wanted '$want'"
        WS_SYNC=$want
    fi
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
say "work dir $WORK (load average $LOAD_START)"
init_walship "$WS_DATA"

fdatasync_rate() { # pg_test_fsync -s 2 in DIR's filesystem; prints fdatasync ops/sec (one 8kB write)
    local out rate
    out=$("$PGBIN/pg_test_fsync" -s 2 -f "$1/pg_test_fsync.tmp" 2>&1) \
        || { echo "$out" >&2; die "pg_test_fsync failed (or was interrupted)"; }
    rm -f "$1/pg_test_fsync.tmp"
    rate=$(awk '/using one 8kB write/ { one = 1; next }
                one && $1 == "fdatasync" { print $2; exit }' <<<"$out")
    [[ $rate =~ ^[0-9.]+$ ]] || { echo "$out" >&2; die "could not find the fdatasync rate in pg_test_fsync's output"; }
    echo "$rate"
}
say "pg_test_fsync -s 2 in the walship data dir's filesystem ($WS_DATA)"
FDATASYNC=$(fdatasync_rate "$WS_DATA")
say "fdatasync (one 8kB write): $FDATASYNC ops/sec"

say "walship: server on 127.0.0.1:$WS_PORT"
start_walship "$WS_DATA" "$WS_PORT" "$WS_LOG"
ws_set_sync local
preload "$WS_PORT" "$KEYS" walship

# ---------------------------------------------------------------- PostgreSQL
PG_PORT=$(free_port)
say "PostgreSQL: initdb, server on 127.0.0.1:$PG_PORT"
as_pg "$PGBIN/initdb" -D "$PG_DATA" -U "$USER_NAME" -A trust --locale=C -E UTF8 --no-sync \
    >"$PG_DIR/initdb.log" 2>&1 || { show "$PG_DIR/initdb.log"; die "initdb failed"; }
pg_running=1
as_pg "$PGBIN/pg_ctl" -D "$PG_DATA" -w -t 60 -l "$PG_LOG" \
    -o "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories='$PG_DIR'" start >/dev/null \
    || { show "$PG_LOG"; die "PostgreSQL did not start (log above)"; }
PG_VERSION=$(sql "$PG_PORT" -c "SHOW server_version") || die "cannot connect to PostgreSQL"
sql "$PG_PORT" -c "CREATE TABLE kv (key text PRIMARY KEY, value text)" || die "CREATE TABLE kv failed"
PG_OPTS=""
pg_set_sync() {
    local want=$1 got
    [[ $want == local ]] && want=on # no standbys: on = local
    got=$(PGOPTIONS="-c synchronous_commit=$want" sql "$PG_PORT" -c "SHOW synchronous_commit") \
        || die "PostgreSQL: SHOW synchronous_commit failed"
    [[ $got == "$want" ]] || die "PostgreSQL: synchronous_commit is '$got' with PGOPTIONS, wanted '$want'"
    PG_OPTS="-c synchronous_commit=$want"
}
preload "$PG_PORT" "$KEYS" PostgreSQL
sql "$PG_PORT" -c "VACUUM ANALYZE kv" -c "CHECKPOINT" || die "PostgreSQL: VACUUM/CHECKPOINT failed"

# ---------------------------------------------------------------- runs
# Each cell runs on both servers back to back (the other one idle), the
# order alternating from cell to cell, so that drift in the disk's fsync
# speed or in background load hits both alike.
CELL=0
run_pair() { # run_pair WORKLOAD SCRIPT MODE CLIENTS
    if ((CELL++ % 2 == 0)); then
        run_bench walship "$WS_PORT" "$WS_LOG" "$@" ""
        run_bench pg "$PG_PORT" "$PG_LOG" "$@" "$PG_OPTS"
    else
        run_bench pg "$PG_PORT" "$PG_LOG" "$@" "$PG_OPTS"
        run_bench walship "$WS_PORT" "$WS_LOG" "$@" ""
    fi
}
# The disk's fdatasync rate drifts by several times within an hour here, so
# the one-client local cells, which it bounds, are bracketed by their own
# pg_test_fsync runs (both servers idle), and compared with those.
declare -A FSYNC_NEAR
for sync in local off; do
    ws_set_sync "$sync"
    pg_set_sync "$sync"
    for mode in prepared simple; do
        for c in "${CLIENT_LIST[@]}"; do
            bracket=0
            [[ $sync == local && $c == 1 ]] && bracket=1
            ((bracket)) && before=$(fdatasync_rate "$WS_DATA")
            run_pair "upsert-$sync" "$SCRIPTS/upsert.sql" "$mode" "$c"
            if ((bracket)); then
                after=$(fdatasync_rate "$WS_DATA")
                FSYNC_NEAR[$mode]="$before $after"
                say "fdatasync around the 1-client -M $mode cell: $before before, $after after"
            fi
        done
    done
done
ws_set_sync local
pg_set_sync local
for c in "${CLIENT_LIST[@]}"; do
    run_pair read "$SCRIPTS/read.sql" prepared "$c"
done
WS_HWM=$(vm_kb VmHWM "$ws_pid")
WS_RSS=$(vm_kb VmRSS "$ws_pid")
stop_walship
stop_pg

# ---------------------------------------------------------------- RSS
RSS_HWM="" RSS_NOW="" RSS_SECS=""
if [[ $RSS_1M == 1 ]]; then
    RSS_PORT=$(free_port)
    say "walship: peak RSS with $RSS_KEYS keys (fresh node on 127.0.0.1:$RSS_PORT)"
    init_walship "$RSS_DATA"
    start_walship "$RSS_DATA" "$RSS_PORT" "$RSS_LOG"
    t0=$(date +%s)
    preload "$RSS_PORT" "$RSS_KEYS" "walship (RSS)"
    RSS_SECS=$(($(date +%s) - t0))
    RSS_HWM=$(vm_kb VmHWM "$ws_pid")
    RSS_NOW=$(vm_kb VmRSS "$ws_pid")
    stop_walship
fi

# ---------------------------------------------------------------- report
cell() { # cell SYSTEM WORKLOAD MODE CLIENTS FIELD(1=tps 2=avg 3=p99)
    local v=${RES["$1|$2|$3|$4"]:-NA}
    if [[ $v == ERR || $v == NA ]]; then echo "$v"; else awk -v f="$5" '{ print $f }' <<<"$v"; fi
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else print "-" }'; }
int() { awk -v a="$1" 'BEGIN { if (a ~ /^[0-9.]+$/) printf "%.0f", a; else print a }'; }

LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$ROOT" status --porcelain 2>/dev/null) ]]; then GIT_REV+="-dirty"; fi
echo
echo "walship $GIT_REV vs PostgreSQL $PG_VERSION; $(nproc) CPUs, $(uname -sr); DURATION=${DURATION}s CLIENTS=\"$CLIENTS\" KEYS=$KEYS"
echo "pgbench -n -c N -j min(N,2) -T $DURATION; both servers on 127.0.0.1 TCP, same filesystem; each cell run on both back to back"
echo "(order alternating, the other server idle); PostgreSQL default settings, C locale"
echo "load average (1/5/15 min) at start: $LOAD_START, at end: $LOAD_END"
echo
printf '| %-15s | %-8s | %7s | %12s | %9s | %6s | %19s | %19s |\n' \
    workload mode clients "walship TPS" "PG TPS" ratio "walship avg/p99 ms" "PG avg/p99 ms"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' \
    "-----------------" "----------" "--------:" "-------------:" "----------:" "-------:" "--------------------:" "--------------------:"
row() {
    local workload=$1 mode=$2 c=$3 label=$4
    local wt pt
    wt=$(cell walship "$workload" "$mode" "$c" 1)
    pt=$(cell pg "$workload" "$mode" "$c" 1)
    printf '| %-15s | %-8s | %7s | %12s | %9s | %6s | %19s | %19s |\n' "$label" "$mode" "$c" \
        "$(int "$wt")" "$(int "$pt")" "$(ratio "$wt" "$pt")" \
        "$(cell walship "$workload" "$mode" "$c" 2) / $(cell walship "$workload" "$mode" "$c" 3)" \
        "$(cell pg "$workload" "$mode" "$c" 2) / $(cell pg "$workload" "$mode" "$c" 3)"
}
for sync in local off; do
    for mode in prepared simple; do
        for c in "${CLIENT_LIST[@]}"; do
            row "upsert-$sync" "$mode" "$c" "upsert sc=$sync"
        done
    done
done
for c in "${CLIENT_LIST[@]}"; do
    row read prepared "$c" "point read"
done
echo
echo "(sc=local: walship synchronous_commit = local, PostgreSQL synchronous_commit = on, no standbys)"
echo
echo "pg_test_fsync -s 2, fdatasync, one 8kB write: $FDATASYNC ops/sec at the start (single-client commit limit)"
for mode in prepared simple; do
    w1=$(cell walship upsert-local "$mode" 1 1)
    p1=$(cell pg upsert-local "$mode" 1 1)
    near=${FSYNC_NEAR[$mode]:-}
    [[ -n $near ]] || continue
    mean=$(awk '{ printf "%.0f", ($1 + $2) / 2 }' <<<"$near")
    echo "1-client upsert sc=local -M $mode: fdatasync $near ops/sec just before/after (mean $mean);" \
        "walship $(int "$w1") TPS = $(ratio "$w1" "$mean") of it; PG $(int "$p1") TPS = $(ratio "$p1" "$mean")"
done
echo "walship server after the runs above ($KEYS keys): VmHWM $(mb "$WS_HWM") MB, VmRSS $(mb "$WS_RSS") MB"
if [[ $RSS_1M == 1 ]]; then
    echo "walship server with $RSS_KEYS keys (preloaded in ${RSS_SECS}s, $BATCH rows/statement): peak RSS (VmHWM) $(mb "$RSS_HWM") MB, VmRSS $(mb "$RSS_NOW") MB"
else
    echo "walship peak RSS with $RSS_KEYS keys: skipped (RSS_1M=$RSS_1M)"
fi

if ((FAILURES > 0)); then
    die "$FAILURES pgbench run(s) failed; their output and server logs are above"
fi
