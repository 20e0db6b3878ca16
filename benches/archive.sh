#!/usr/bin/env bash
# One-shot WAL archiving and restore: walship against cp + sync (the floor)
# and pgBackRest's archive-push, on the same 16 MiB segments.
#
# 1. A walship node (archive_mode = on) fills SEGMENTS segments with upserts
#    of random 1 KiB hex values (about half of it compressible), then stops
#    (SIGTERM). Its SEGMENTS completed segments are then copied by
#      - cp + sync:   `cp` of the files to a fresh directory, then one `sync`;
#      - dd + fsync:  `dd bs=1M conv=fsync` per file (each file fsynced, no
#                     directory fsync): a per-file-durable floor;
#      - walship archive -D DIR (one process, every .ready segment), into a
#        fresh archive, uncompressed and with --compression zstd.
#    Between runs the segments' .done marks go back to .ready.
# 2. pgBackRest refuses segments of another system (it checks the system
#    identifier against its stanza's), so a PostgreSQL 15 cluster (initdb
#    --wal-segsize=16) writes SEGMENTS segments of the same workload, and
#    these are copied out and shipped, one process per segment as
#    archive_command runs them, by
#      - cp + sync and dd + fsync as above;
#      - walship archive --archive ADIR SEGMENT (PostgreSQL's entry point);
#      - pgbackrest archive-push SEGMENT (archive-async=n), into a fresh repo
#        copied from one made by stanza-create;
#    each uncompressed (pgBackRest compress-type=none) and compressed
#    (walship --compression zstd, pgBackRest compress-type=zst; both zstd
#    level 3), with the archive's size against the segments' size.
# 3. Restore of all SEGMENTS segments from the walship archive of part 1, as
#    a recovering server asks for them (one process per segment, each to
#    DIR/pg_wal/RECOVERYXLOG): with --prefetch 0 against the default
#    prefetch (8), for the uncompressed and the zstd archive. The spool
#    (.walship-prefetch) is removed and any prefetch worker this script
#    started is killed before each loop.
#
# Every contender runs ROUNDS times, the order rotating each round, each
# run with a cold page cache (`sync; echo 3 > /proc/sys/vm/drop_caches`
# before it; needs root, otherwise the cache is warm and the report says
# so). Reported: median wall seconds, the range, the CPU seconds (user +
# system of the timed processes; a detached prefetch worker's are not
# counted) of the median run, and the ratios the goals name:
#   walship archive within 1.3x of cp + sync, faster than pgbackrest;
#   restore with prefetch at least 3x faster than without.
#
# Usage: benches/archive.sh   (as root -- PostgreSQL and pgBackRest then run
#                              as the `postgres` user -- or as a normal user)
# Environment:
#   SEGMENTS   segments shipped per run         (default 64)
#   ROUNDS     runs of every contender          (default 3)
#   PGBIN      PostgreSQL 15 binaries (default /usr/lib/postgresql/15/bin)
#   PGBACKREST pgbackrest binary                (default: pgbackrest on PATH)
#   WALSHIP    walship binary (default: cargo build --release)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
SEGMENTS=${SEGMENTS:-64}
ROUNDS=${ROUNDS:-3}
USER_NAME=bench
SEG_BYTES=$((16 * 1024 * 1024))

die() { echo "archive.sh: error: $*" >&2; exit 1; }
say() { echo "== $*" >&2; }
for v in SEGMENTS ROUNDS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
for tool in initdb pg_ctl psql; do
    [[ -x $PGBIN/$tool ]] || die "missing $PGBIN/$tool"
done
PGBACKREST=${PGBACKREST:-$(command -v pgbackrest || true)}
[[ -n $PGBACKREST && -x $PGBACKREST ]] || die "pgbackrest is needed (apt-get install pgbackrest)"
[[ -x /usr/bin/time ]] || die "/usr/bin/time is needed to measure CPU seconds (apt-get install time)"
command -v python3 >/dev/null || die "python3 is needed to generate the workload"
command -v ss >/dev/null || die "ss (iproute2) is needed to find free ports"
HEAD=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')
if [[ -z ${WALSHIP:-} ]]; then
    say "building walship (cargo build --release)"
    (cd "$ROOT" && cargo build --release --quiet --bin walship) || die "cargo build --release failed"
    WALSHIP=$ROOT/target/release/walship
    WALSHIP_DESC="walship $HEAD (built from this tree)"
else
    WALSHIP_DESC="walship binary $WALSHIP of $(date -u -r "$WALSHIP" '+%F %H:%M UTC') (tree at $HEAD)"
fi
[[ -x $WALSHIP ]] || die "no walship binary at $WALSHIP"
PSQL=$PGBIN/psql

LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
WORK=$(mktemp -d /tmp/walship-archive.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/pg" "$WORK/b" "$WORK/runs"
if [[ $(id -u) == 0 ]]; then
    chown postgres: "$WORK/pg" "$WORK/b"
    AS_PG=(runuser -u postgres --)
    CACHE=cold
else
    AS_PG=()
    CACHE=warm
fi
as_pg() { "${AS_PG[@]}" "$@"; }

PIDS=()
PG_DATAS=()
# Prefetch workers this script started: they run detached, but every one
# names this run's temp dir in its arguments.
kill_workers() {
    local p
    for p in $(pgrep -f -- "prefetch-worker --archive $WORK/" || true); do kill -TERM "$p" 2>/dev/null || true; done
}
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    for d in "${PG_DATAS[@]}"; do as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate -w stop >/dev/null 2>&1 || true; done
    kill_workers
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
sql() { local port=$1 db=$2; shift 2; "$PSQL" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$USER_NAME" -d "$db" "$@"; }
wait_sql() { # wait_sql PORT DB LOG
    for _ in $(seq 300); do
        sql "$1" "$2" -c "SELECT 1" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    cat "$3" >&2 || true
    die "server on port $1 did not start (log above)"
}
seg_name() { printf '%08X%08X%08X' 1 $(($1 / 256)) $(($1 % 256)); } # 16 MiB segments, timeline 1
seg_no() { echo $((16#${1:8:8} * 256 + 16#${1:16:8})); }

# The workload: MB of upserts of random 1 KiB hex values over 20 000 keys
# (bounded memory on the node), 100 distinct keys per statement.
cat >"$WORK/gen.py" <<'EOF'
import os, random, sys
mb = int(sys.argv[1]); keys = 20000; vlen = 1024
rows = mb * 1024 * 1024 // (vlen + 16)
out = sys.stdout
out.write("SET synchronous_commit = off;\n")
for i in range(0, rows, 100):
    vals = ",".join("('k%d','%s')" % (k, os.urandom(vlen // 2).hex())
                    for k in random.sample(range(keys), min(100, rows - i)))
    out.write("INSERT INTO kv VALUES " + vals + " ON CONFLICT (key) DO UPDATE SET value = excluded.value;\n")
EOF

# ------------------------------------------------------------ walship segments
WS=$WORK/ws
WS_PORT=$(free_port)
say "walship: node on $WS_PORT, writing $SEGMENTS segments"
"$WALSHIP" init -D "$WS" --wal-segsize 16 -U "$USER_NAME" >/dev/null
printf 'archive_mode = on\nport = %s\n' "$WS_PORT" >>"$WS/walship.conf"
"$WALSHIP" server -D "$WS" 2>>"$WORK/ws.log" &
WS_PID=$!
PIDS+=("$WS_PID")
wait_sql "$WS_PORT" walship "$WORK/ws.log"
STATUS=$WS/wal/archive_status
ws_ready() { find "$STATUS" -name '*.ready' | wc -l; }
while (( (n = $(ws_ready)) < SEGMENTS )); do
    python3 "$WORK/gen.py" $(((SEGMENTS - n) * 16 + 4)) | sql "$WS_PORT" walship -f - >/dev/null
done
kill -TERM "$WS_PID"
wait "$WS_PID" 2>/dev/null || true
mapfile -t WS_NAMES < <(find "$STATUS" -name '*.ready' -printf '%f\n' | sed 's/\.ready$//' | sort)
[[ ${WS_NAMES[0]} =~ ^[0-9A-F]{24}$ ]] || die "unexpected .ready file ${WS_NAMES[0]}"
# Segments past the first SEGMENTS are left out (marked done).
for name in "${WS_NAMES[@]:$SEGMENTS}"; do mv "$STATUS/$name.ready" "$STATUS/$name.done"; done
WS_NAMES=("${WS_NAMES[@]:0:$SEGMENTS}")
WS_FILES=("${WS_NAMES[@]/#/$WS/wal/}")
ws_rearm() { for name in "${WS_NAMES[@]}"; do [[ -e $STATUS/$name.ready ]] || mv "$STATUS/$name.done" "$STATUS/$name.ready"; done; }

# ------------------------------------------------------------ PostgreSQL segments
PG_PORT=$(free_port)
say "PostgreSQL: cluster on $PG_PORT, writing $SEGMENTS segments"
as_pg "$PGBIN/initdb" -D "$WORK/pg/data" --wal-segsize=16 -U "$USER_NAME" -A trust --locale=C -E UTF8 --no-sync >/dev/null
PG_DATAS+=("$WORK/pg/data")
as_pg "$PGBIN/pg_ctl" -D "$WORK/pg/data" -w -l "$WORK/pg/log" \
    -o "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories='$WORK/pg' -c max_wal_size=4GB -c wal_keep_size=4GB" \
    start >/dev/null
sql "$PG_PORT" postgres -c "CREATE TABLE kv (key text PRIMARY KEY, value text)"
pg_segno() { seg_no "$(sql "$PG_PORT" postgres -c "SELECT pg_walfile_name(pg_current_wal_lsn())")"; }
PG_FIRST=$(pg_segno)
while (( (n = $(pg_segno) - PG_FIRST) < SEGMENTS )); do
    python3 "$WORK/gen.py" $(((SEGMENTS - n) * 12 + 4)) | sql "$PG_PORT" postgres -f - >/dev/null
done
PG_CUR=$(pg_segno)

# A stanza made while the cluster runs; every pgBackRest run gets a copy of
# this empty repository.
mkdir -p "$WORK/b/repo" "$WORK/b/log" "$WORK/b/lock"
cat >"$WORK/b/pgbackrest.conf" <<EOF
[global]
repo1-path=$WORK/b/repo
log-path=$WORK/b/log
lock-path=$WORK/b/lock
log-level-console=warn
log-level-file=off
archive-async=n

[bench]
pg1-path=$WORK/pg/data
pg1-port=$PG_PORT
pg1-socket-path=$WORK/pg
pg1-user=$USER_NAME
EOF
[[ $CACHE == cold ]] && chown -R postgres: "$WORK/b"
as_pg "$PGBACKREST" --config="$WORK/b/pgbackrest.conf" --stanza=bench stanza-create >/dev/null \
    || die "pgbackrest stanza-create failed"
as_pg "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m fast -w stop >/dev/null
PG_DATAS=()
PG_NAMES=()
for ((s = PG_CUR - SEGMENTS; s < PG_CUR; s++)); do PG_NAMES+=("$(seg_name "$s")"); done
mkdir -p "$WORK/b/wal"
for name in "${PG_NAMES[@]}"; do cp "$WORK/pg/data/pg_wal/$name" "$WORK/b/wal/"; done
[[ $CACHE == cold ]] && chown -R postgres: "$WORK/b"
PG_FILES=("${PG_NAMES[@]/#/$WORK/b/wal/}")

# ------------------------------------------------------------ contenders
# Each is a small script taking DEST then the files: what is timed.
cat >"$WORK/cp_sync.sh" <<'EOF'
dest=$1; shift; cp -- "$@" "$dest/" && sync
EOF
cat >"$WORK/dd_fsync.sh" <<'EOF'
dest=$1; shift; for f; do dd if="$f" of="$dest/${f##*/}" bs=1M conv=fsync status=none || exit 1; done
EOF
cat >"$WORK/ws_each.sh" <<'EOF'
walship=$1 dest=$2 comp=$3; shift 3
for f; do "$walship" archive --archive "$dest" --compression "$comp" "$f" 2>>"$dest.log" || exit 1; done
EOF
cat >"$WORK/pgbr_each.sh" <<'EOF'
pgbackrest=$1 dest=$2 comp=$3 conf=$4; shift 4
for f; do "$pgbackrest" --config="$conf" --stanza=bench --repo1-path="$dest" --compress-type="$comp" archive-push "$f" || exit 1; done
EOF
# As PostgreSQL's startup process does, the previous RECOVERYXLOG is
# unlinked before each restore_command (RestoreArchivedFile), so freeing
# it is not the restore's cost (it was half of one from the spool).
cat >"$WORK/restore_loop.sh" <<'EOF'
walship=$1 adir=$2 dest=$3 prefetch=$4; shift 4
for name; do rm -f "$dest"; "$walship" restore --archive "$adir" "$name" "$dest" --prefetch "$prefetch" || exit 1; done
EOF

cold() {
    if [[ $CACHE == cold ]]; then sync; echo 3 >/proc/sys/vm/drop_caches; fi
}
declare -A TIMES=() SIZE=()
KEEP_WS=$WORK/runs/ws-keep
KEEP_WSZ=$WORK/runs/wsz-keep
# timed KEY me|pg CMD...: CMD as this user or as postgres, page cache dropped first.
timed() {
    local key=$1 who=$2 runner=(); shift 2
    [[ $who == pg ]] && runner=("${AS_PG[@]}")
    cold
    if ! /usr/bin/time -f "%e %U %S" -o "$WORK/runs/time" "${runner[@]}" "$@" >"$WORK/runs/out" 2>&1; then
        cat "$WORK/runs/out" >&2
        die "$key failed"
    fi
    read -r e u s <"$WORK/runs/time"
    TIMES[$key]+="$e $(awk -v u="$u" -v s="$s" 'BEGIN { printf "%.2f", u + s }'),"
    printf '   %-22s %6.2f s  (CPU %s s)\n' "$key" "$e" "$(awk -v u="$u" -v s="$s" 'BEGIN { printf "%.2f", u + s }')" >&2
}
size_of() { find "$1" -type f \( -name '0000*' \) -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }
count_of() { find "$1" -type f -name '0000*' | wc -l; }
check_count() { # check_count KEY DIR
    local n
    n=$(count_of "$2")
    [[ $n == "$SEGMENTS" ]] || die "$1 left $n segment files in $2, not $SEGMENTS"
}
fresh() { rm -rf "$1"; mkdir -p "$1"; [[ $CACHE == cold && $1 == "$WORK/b/"* ]] && chown postgres: "$1"; return 0; }
RESTORE_DIR=$WORK/restore/pg_wal
mkdir -p "$RESTORE_DIR"

run() { # run CONTENDER ROUND
    local c=$1 r=$2 d=$WORK/runs/$1.$2
    case $c in
    ws-cp-sync) fresh "$d"; timed "$c" me bash "$WORK/cp_sync.sh" "$d" "${WS_FILES[@]}"; check_count "$c" "$d" ;;
    ws-dd-fsync) fresh "$d"; timed "$c" me bash "$WORK/dd_fsync.sh" "$d" "${WS_FILES[@]}"; check_count "$c" "$d" ;;
    ws-archive | ws-archive-zstd)
        rm -rf "$d"; ws_rearm
        local comp=none; [[ $c == ws-archive-zstd ]] && comp=zstd
        timed "$c" me "$WALSHIP" archive --archive "$d" -D "$WS" --create --compression "$comp"
        check_count "$c" "$d"
        SIZE[$c]=$(size_of "$d")
        if [[ $comp == none ]]; then rm -rf "$KEEP_WS"; mv "$d" "$KEEP_WS"; else rm -rf "$KEEP_WSZ"; mv "$d" "$KEEP_WSZ"; fi ;;
    pg-cp-sync) d=$WORK/b/cp; fresh "$d"; timed "$c" pg bash "$WORK/cp_sync.sh" "$d" "${PG_FILES[@]}"; check_count "$c" "$d" ;;
    pg-dd-fsync) d=$WORK/b/dd; fresh "$d"; timed "$c" pg bash "$WORK/dd_fsync.sh" "$d" "${PG_FILES[@]}"; check_count "$c" "$d" ;;
    pg-walship | pg-walship-zstd)
        d=$WORK/b/ws; rm -rf "$d" "$d.log"
        local comp=none; [[ $c == pg-walship-zstd ]] && comp=zstd
        timed "$c" pg bash "$WORK/ws_each.sh" "$WALSHIP" "$d" "$comp" "${PG_FILES[@]}"
        check_count "$c" "$d"; SIZE[$c]=$(size_of "$d") ;;
    pg-pgbackrest | pg-pgbackrest-zst)
        d=$WORK/b/br; rm -rf "$d"; cp -a "$WORK/b/repo" "$d"
        local comp=none; [[ $c == pg-pgbackrest-zst ]] && comp=zst
        timed "$c" pg bash "$WORK/pgbr_each.sh" "$PGBACKREST" "$d" "$comp" "$WORK/b/pgbackrest.conf" "${PG_FILES[@]}"
        check_count "$c" "$d"; SIZE[$c]=$(size_of "$d") ;;
    restore-*)
        local adir=$KEEP_WS prefetch=8
        [[ $c == restore-zstd-* ]] && adir=$KEEP_WSZ
        [[ $c == *-prefetch0 ]] && prefetch=0
        kill_workers; rm -rf "$RESTORE_DIR/.walship-prefetch" "$RESTORE_DIR/RECOVERYXLOG"
        timed "$c" me bash "$WORK/restore_loop.sh" "$WALSHIP" "$adir" "$RESTORE_DIR/RECOVERYXLOG" "$prefetch" "${WS_NAMES[@]}"
        cmp -s "$RESTORE_DIR/RECOVERYXLOG" "${WS_FILES[-1]}" || die "$c: the last segment restored differs from the original"
        kill_workers ;;
    *) die "unknown contender $c" ;;
    esac
    [[ $c == ws-archive* || $c == restore-* ]] || rm -rf "$d" "$WORK/runs/$c.$r"
}

ARCHIVERS=(ws-cp-sync ws-dd-fsync ws-archive ws-archive-zstd pg-cp-sync pg-dd-fsync pg-walship pg-pgbackrest pg-walship-zstd pg-pgbackrest-zst)
RESTORERS=(restore-prefetch0 restore-prefetch8 restore-zstd-prefetch0 restore-zstd-prefetch8)
for ((r = 0; r < ROUNDS; r++)); do
    say "round $((r + 1)) of $ROUNDS (page cache $CACHE before each run)"
    n=${#ARCHIVERS[@]}
    for ((i = 0; i < n; i++)); do run "${ARCHIVERS[(i + r) % n]}" "$r"; done
done
for ((r = 0; r < ROUNDS; r++)); do
    say "restore round $((r + 1)) of $ROUNDS"
    n=${#RESTORERS[@]}
    for ((i = 0; i < n; i++)); do run "${RESTORERS[(i + r) % n]}" "$r"; done
done

# ------------------------------------------------------------ report
# median KEY -> "median min max cpu_of_median_run"
median() {
    tr ',' '\n' <<<"${TIMES[$1]}" | awk 'NF' | sort -n | awk '{ e[NR] = $1; c[NR] = $2 }
        END { m = int((NR + 1) / 2); printf "%.2f %.2f %.2f %.2f", e[m], e[1], e[NR], c[m] }'
}
med() { median "$1" | awk '{ print $1 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else print "-" }'; }
RAW=$((SEGMENTS * SEG_BYTES))
label() {
    case $1 in
    ws-cp-sync | pg-cp-sync) echo "cp + sync" ;;
    ws-dd-fsync | pg-dd-fsync) echo "dd conv=fsync per file" ;;
    ws-archive) echo "walship archive -D (one process)" ;;
    ws-archive-zstd) echo "walship archive -D, zstd" ;;
    pg-walship) echo "walship archive SEGMENT (per segment)" ;;
    pg-walship-zstd) echo "walship archive SEGMENT, zstd" ;;
    pg-pgbackrest) echo "pgbackrest archive-push, none" ;;
    pg-pgbackrest-zst) echo "pgbackrest archive-push, zst" ;;
    restore-prefetch0) echo "restore loop, --prefetch 0" ;;
    restore-prefetch8) echo "restore loop, prefetch 8 (default)" ;;
    restore-zstd-prefetch0) echo "restore loop, zstd archive, --prefetch 0" ;;
    restore-zstd-prefetch8) echo "restore loop, zstd archive, prefetch 8" ;;
    esac
}
row() { # row KEY BASE_KEY [speedup]: the ratio is KEY / BASE, or BASE / KEY with "speedup"
    local m lo hi cpu size="" r
    read -r m lo hi cpu <<<"$(median "$1")"
    [[ -n ${SIZE[$1]:-} ]] && size=$(ratio "${SIZE[$1]}" "$RAW")
    if [[ ${3:-} == speedup ]]; then r=$(ratio "$(med "$2")" "$m"); else r=$(ratio "$m" "$(med "$2")"); fi
    printf '| %-42s | %6s | %-13s | %6s | %6.0f | %6s | %5s |\n' "$(label "$1")" "$m" "$lo-$hi" "$cpu" \
        "$(awk -v s="$m" -v b="$RAW" 'BEGIN { print b / 1048576 / s }')" "$r" "${size:--}"
}
header() { printf '| %-42s | %6s | %-13s | %6s | %6s | %6s | %5s |\n' "$1" "median s" "range s" "CPU s" "MB/s" "$2" "size"; echo "|---|--:|--:|--:|--:|--:|--:|"; }

echo
echo "$WALSHIP_DESC, PostgreSQL $("$PGBIN/postgres" -V | awk '{ print $3 }'), $("$PGBACKREST" version);" \
    "$(nproc) CPUs, load average $LOAD_START at the start, $(cut -d' ' -f1 /proc/loadavg) at the end;" \
    "$SEGMENTS segments of 16 MiB ($((RAW / 1048576)) MiB) per run; median of $ROUNDS runs; page cache $CACHE before each run"
echo
echo "walship's own segments (walship node, archive_mode = on):"
echo
header "contender" "× cp+sync"
for k in ws-cp-sync ws-dd-fsync ws-archive ws-archive-zstd; do row "$k" ws-cp-sync; done
echo
echo "PostgreSQL 15 segments, one process per segment as archive_command runs (cp and dd: one process for all):"
echo
header "contender" "× cp+sync"
for k in pg-cp-sync pg-dd-fsync pg-walship pg-pgbackrest pg-walship-zstd pg-pgbackrest-zst; do row "$k" pg-cp-sync; done
echo
echo "restore of the $SEGMENTS segments of the walship archive, one process per segment to pg_wal/RECOVERYXLOG:"
echo
header "restore" "speedup"
for k in restore-prefetch0 restore-prefetch8; do row "$k" restore-prefetch0 speedup; done
for k in restore-zstd-prefetch0 restore-zstd-prefetch8; do row "$k" restore-zstd-prefetch0 speedup; done
echo
goal() { awk -v v="$1" -v op="$2" -v g="$3" 'BEGIN { ok = (op == "<=" ? v <= g : op == "<" ? v < g : v >= g); printf "%s", ok ? "met" : "NOT met" }'; }
a=$(ratio "$(med ws-archive)" "$(med ws-cp-sync)"); b=$(ratio "$(med pg-walship)" "$(med pg-cp-sync)")
c=$(ratio "$(med pg-walship)" "$(med pg-pgbackrest)"); d=$(ratio "$(med pg-walship-zstd)" "$(med pg-pgbackrest-zst)")
e=$(ratio "$(med restore-prefetch0)" "$(med restore-prefetch8)"); f=$(ratio "$(med restore-zstd-prefetch0)" "$(med restore-zstd-prefetch8)")
echo "goals:"
echo "  walship archive -D / cp + sync                = $a  (<= 1.3: $(goal "$a" '<=' 1.3))"
echo "  walship archive SEGMENT / cp + sync (PG segs) = $b  (<= 1.3: $(goal "$b" '<=' 1.3))"
echo "  walship / pgbackrest, uncompressed            = $c  (< 1: $(goal "$c" '<' 1))"
echo "  walship zstd / pgbackrest zst                 = $d  (< 1: $(goal "$d" '<' 1))"
echo "  zstd size: walship $(ratio "${SIZE[ws-archive-zstd]}" "$RAW") of its own segments, $(ratio "${SIZE[pg-walship-zstd]}" "$RAW") of PG's; pgbackrest $(ratio "${SIZE[pg-pgbackrest-zst]}" "$RAW")"
echo "  restore: no prefetch / prefetch               = $e  (>= 3: $(goal "$e" '>=' 3)); zstd archive $f"
