#!/usr/bin/env bash
# Times `walship dump --verify SEGMENT` against `pg_waldump --quiet SEGMENT`
# on one complete 16 MiB segment written by a real PostgreSQL 15 server.
#
# What it does:
#   1. initdb a throw-away cluster in a temp dir (default 16 MiB segments),
#      start it on a unix socket in that dir (no TCP),
#   2. run `pgbench -i -s 5`, then pgbench transactions (TPC-B-like:
#      UPDATE/SELECT/INSERT, with full-page images) until the segment before
#      the one holding the WAL flush LSN is complete and began after the bulk
#      load, so it holds the mixed workload,
#   3. copy that segment out, stop the server,
#   4. check both tools walk the same number of records in it, then time
#      both (hyperfine if installed, else an alternating bash loop) and print
#      the ratio (the goal is walship >= 2x faster); also the ratio of CPU
#      time and, with valgrind, of instructions executed, which load from
#      other processes disturbs less than wall time.
#   5. stop the server and remove the temp dir, also on failure (trap).
#
# Both tools are given only the one segment file: pg_waldump then stops at
# the segment's end (it sets its end LSN to the end of the last file given),
# and walship stops there too ("end of the given segments"), so both walk
# exactly the records that begin and end inside the segment; the script
# checks that the counts agree.
#
# Usage: benches/dump_vs_pg_waldump.sh        (as root or as a normal user)
# Environment:
#   PGBIN      PostgreSQL 15 binaries   (default /usr/lib/postgresql/15/bin)
#   WALSHIP    walship binary           (default target/release/walship; built if absent)
#   RUNS       timed runs per tool      (default 20)
#   NO_HYPERFINE=1  time with a bash loop even when hyperfine is installed
#   CALLGRIND=0     skip counting instructions with valgrind --tool=callgrind
#   KEEP_SEGMENT_DIR  where a copy of the segment is kept for `cargo bench
#              --bench wal` (decoder benchmark); default target/bench-pg-wal,
#              empty to keep nothing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
WALSHIP=${WALSHIP:-$ROOT/target/release/walship}
RUNS=${RUNS:-20}
KEEP_SEGMENT_DIR=${KEEP_SEGMENT_DIR-$ROOT/target/bench-pg-wal}
SEG_BYTES=$((16 * 1024 * 1024))

if [[ ! -x $WALSHIP ]]; then
    (cd "$ROOT" && cargo build --release --bin walship)
fi
for tool in initdb pg_ctl psql pgbench pg_waldump; do
    [[ -x $PGBIN/$tool ]] || { echo "missing $PGBIN/$tool" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/walship-dumpbench.XXXXXX)
DATA=$WORK/data
if [[ $(id -u) == 0 ]]; then
    # PostgreSQL refuses to run as root.
    chown postgres: "$WORK"
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

cleanup() {
    local status=$?
    if [[ -f $DATA/postmaster.pid ]]; then
        as_pg "$PGBIN/pg_ctl" -D "$DATA" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "== cluster in $WORK"
as_pg "$PGBIN/initdb" -D "$DATA" -U postgres -A trust --no-sync >"$WORK/initdb.log" 2>&1 \
    || { cat "$WORK/initdb.log" >&2; exit 1; }
as_pg "$PGBIN/pg_ctl" -D "$DATA" -w -l "$WORK/server.log" \
    -o "-c listen_addresses='' -c unix_socket_directories='$WORK' -c port=5432 -c synchronous_commit=off" start >/dev/null \
    || { cat "$WORK/server.log" >&2; exit 1; }

psql_q() { as_pg "$PGBIN/psql" -h "$WORK" -U postgres -d postgres -XAtq -v ON_ERROR_STOP=1 -c "$1"; }
lsn_diff() { psql_q "SELECT pg_wal_lsn_diff('$1', '$2')::bigint"; }

echo "== pgbench -i -s 5"
as_pg "$PGBIN/pgbench" -h "$WORK" -U postgres -i -s 5 -q postgres >"$WORK/pgbench-init.log" 2>&1 \
    || { cat "$WORK/pgbench-init.log" >&2; exit 1; }

segno_of() { psql_q "SELECT floor(pg_wal_lsn_diff('$1', '0/0') / $SEG_BYTES)::bigint"; }
start_lsn=$(psql_q "SELECT pg_current_wal_lsn()")
start_segno=$(segno_of "$start_lsn")
echo "== pgbench transactions from $start_lsn until a whole segment of their WAL is flushed"
for round in $(seq 1 60); do
    as_pg "$PGBIN/pgbench" -h "$WORK" -U postgres -c 4 -j 2 -T 5 -n postgres >"$WORK/pgbench.log" 2>&1 \
        || { cat "$WORK/pgbench.log" >&2; exit 1; }
    flush=$(psql_q "SELECT pg_current_wal_flush_lsn()")
    flush_segno=$(segno_of "$flush")
    echo "   round $round: WAL flushed to $flush, $(($(lsn_diff "$flush" "$start_lsn") / 1024 / 1024)) MiB since $start_lsn"
    # The segment before the flush LSN's is complete and written out; it
    # began after the bulk load when it is past the load's last segment.
    if ((flush_segno >= start_segno + 2)); then break; fi
done
((flush_segno >= start_segno + 2)) || { echo "the WAL did not grow by a whole segment" >&2; exit 1; }
prev_segno=$((flush_segno - 1))
# Timeline 1 (a new cluster); 256 segments of 16 MiB per 4 GiB "log".
prev_seg=$(printf '%08X%08X%08X' 1 $((prev_segno / 256)) $((prev_segno % 256)))
mkdir "$WORK/seg"
cp "$DATA/pg_wal/$prev_seg" "$WORK/seg/"
SEG=$WORK/seg/$prev_seg
[[ $(stat -c %s "$SEG") == "$SEG_BYTES" ]] || { echo "$SEG is not 16 MiB" >&2; exit 1; }
echo "== stopping the server; timing on $prev_seg (flush LSN was $flush)"
as_pg "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null

# Both tools must walk the same records.
pg_records=$("$PGBIN/pg_waldump" "$SEG" | wc -l)
pg_stats=$("$PGBIN/pg_waldump" --stats "$SEG" | awk '/^Total/ {print $2}')
walship_report=$("$WALSHIP" dump --verify "$SEG")
walship_records=$(sed -n 's/^verified \([0-9]*\) record.*/\1/p' <<<"$walship_report")
echo "   pg_waldump: $pg_records records (--stats total $pg_stats)"
echo "   walship:    $walship_report"
if [[ $pg_records != "$walship_records" || $pg_stats != "$walship_records" ]]; then
    echo "record counts differ: pg_waldump $pg_records/$pg_stats, walship $walship_records" >&2
    exit 1
fi
"$PGBIN/pg_waldump" --quiet "$SEG"   # fails the script if it reports an error

if [[ -n $KEEP_SEGMENT_DIR ]]; then
    mkdir -p "$KEEP_SEGMENT_DIR"
    rm -f "$KEEP_SEGMENT_DIR"/[0-9A-F]*
    cp "$SEG" "$KEEP_SEGMENT_DIR/"
    echo "   kept a copy in $KEEP_SEGMENT_DIR/$prev_seg"
fi

WALSHIP_ARGV=("$WALSHIP" dump --verify "$SEG")
PG_ARGV=("$PGBIN/pg_waldump" --quiet "$SEG")
echo "== timing, $RUNS runs each"
cpu_ratio=
if [[ -z ${NO_HYPERFINE-} ]] && command -v hyperfine >/dev/null; then
    # -N: no intermediate shell. Each command: 3 warm-up runs, then RUNS
    # timed runs (walship's first, then pg_waldump's).
    hyperfine -N --warmup 3 --runs "$RUNS" --export-csv "$WORK/times.csv" \
        -n walship "${WALSHIP_ARGV[*]}" -n pg_waldump "${PG_ARGV[*]}"
    # CSV columns: command,mean,stddev,median,user,system,min,max (seconds).
    field() { awk -F, -v c="$1" -v f="$2" '$1 == c { print $f }' "$WORK/times.csv"; }
    walship_s=$(field walship 2)
    pg_s=$(field pg_waldump 2)
    cpu_ratio=$(awk -v wu="$(field walship 5)" -v ws="$(field walship 6)" \
        -v pu="$(field pg_waldump 5)" -v ps="$(field pg_waldump 6)" \
        'BEGIN { printf "%.2f", (pu + ps) / (wu + ws) }')
else
    # Mean wall time over RUNS rounds, each timing one run of each tool
    # (alternating, so changing load hits both alike), after 3 warm-ups.
    now_ns() { date +%s%N; }
    for i in 1 2 3; do "${WALSHIP_ARGV[@]}" >/dev/null; "${PG_ARGV[@]}" >/dev/null; done
    walship_ns=0
    pg_ns=0
    for ((i = 0; i < RUNS; i++)); do
        t0=$(now_ns); "${WALSHIP_ARGV[@]}" >/dev/null; t1=$(now_ns)
        "${PG_ARGV[@]}" >/dev/null; t2=$(now_ns)
        walship_ns=$((walship_ns + t1 - t0))
        pg_ns=$((pg_ns + t2 - t1))
    done
    walship_s=$(awk -v ns="$walship_ns" -v n="$RUNS" 'BEGIN { printf "%.6f", ns / n / 1e9 }')
    pg_s=$(awk -v ns="$pg_ns" -v n="$RUNS" 'BEGIN { printf "%.6f", ns / n / 1e9 }')
    echo "(bash loop, no hyperfine: wall time only)"
fi
awk -v w="$walship_s" -v p="$pg_s" -v n="$walship_records" -v cpu="$cpu_ratio" 'BEGIN {
    printf "\nrecords walked by each:  %d\n", n
    printf "walship dump --verify:   %8.2f ms  (%.0f MiB/s)\n", w * 1000, 16 / w
    printf "pg_waldump --quiet:      %8.2f ms  (%.0f MiB/s)\n", p * 1000, 16 / p
    printf "ratio (pg_waldump / walship, mean wall time): %.2fx  (goal >= 2x: %s)\n", p / w, (p / w >= 2 ? "met" : "NOT met")
    if (cpu != "") printf "ratio of mean CPU time (user + sys):            %sx\n", cpu
}'

# Instructions executed, from callgrind: unlike time, not disturbed by other
# load on the machine (CALLGRIND=0 to skip).
if [[ ${CALLGRIND-1} != 0 ]] && command -v valgrind >/dev/null; then
    instructions() {
        valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" 2>&1 >/dev/null |
            sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
    }
    walship_ir=$(instructions "${WALSHIP_ARGV[@]}")
    pg_ir=$(instructions "${PG_ARGV[@]}")
    awk -v w="$walship_ir" -v p="$pg_ir" -v n="$walship_records" 'BEGIN {
        printf "instructions (callgrind): walship %d (%.0f per record), pg_waldump %d (%.0f per record): ratio %.2fx\n",
            w, w / n, p, p / n, p / w
    }'
fi
