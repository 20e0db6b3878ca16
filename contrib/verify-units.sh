#!/usr/bin/env bash
# Checks contrib/systemd/* with `systemd-analyze verify` (run by .ci/run).
#
# `systemd-analyze verify` loads each unit (a template as NAME@i), the units
# it refers to, and checks that every Exec*= command exists and is executable
# and that every Documentation=man: page exists. Two things stand between it
# and these units on a build machine, and here is how each is handled:
#
#  * /usr/bin/walship is not installed here. Rather than rewrite the units,
#    they are verified byte for byte inside a throwaway root (--root) laid out
#    like the system they are installed on: the units in /etc/systemd/system,
#    this machine's own systemd units (for network-online.target,
#    multi-user.target and the rest), every other command the units run
#    (/bin/kill) copied from this machine, and in /usr/bin/walship an
#    executable stub that is never run (verify only checks that it could be).
#    So a unit that names a command absent from this machine fails, as it
#    would on a real one.
#  * The man pages are not installed either: MANPATH points man at the pages
#    in man/ (generated from the command line), so a Documentation= line naming
#    a page walship does not have fails.
#
# verify exits 0 on some mistakes it only warns about (an unknown key, a bad
# value it ignores), so any output at all is a failure. Two controls keep the
# result honest: a trivial good unit must verify cleanly (if it does not,
# systemd-analyze cannot work on this machine, for example in some containers,
# and the check is skipped, saying so), and a deliberately broken unit must be
# caught (if it is not, the check fails: a pass would mean nothing).
#
# Usage: contrib/verify-units.sh            (exit 0: verified or skipped)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "verify-units: $*"; }

if ! command -v systemd-analyze >/dev/null; then
    say "SKIPPED: systemd-analyze is not installed (apt-get install systemd)"
    exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# A root with systemd's own units and the commands the units run.
# make_root DIR UNIT...: units go to DIR/etc/systemd/system.
make_root() {
    local root=$1
    shift
    mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd" "$root/usr/bin" "$root/usr/sbin"
    ln -s usr/bin "$root/bin"
    ln -s usr/sbin "$root/sbin"
    ln -s usr/lib "$root/lib"
    cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
    local unit cmd
    for unit in "$@"; do
        cp "$unit" "$root/etc/systemd/system/"
        # The command of every Exec*= line, its prefixes (-@:+!) removed.
        sed -n 's/^Exec[A-Za-z]*=[-@:+!]*\([^ ]*\).*/\1/p' "$unit" | sort -u | while read -r cmd; do
            case $cmd in
                /usr/bin/walship)
                    printf '#!/bin/sh\necho "stub for systemd-analyze verify; never run" >&2\nexit 1\n' >"$root$cmd"
                    chmod 755 "$root$cmd"
                    ;;
                /*)
                    # Copied if this machine has it; left missing otherwise,
                    # so that verify reports it.
                    if [ -e "$cmd" ] && [ ! -e "$root$cmd" ]; then
                        mkdir -p "$root$(dirname "$cmd")"
                        cp -L "$cmd" "$root$cmd"
                    fi
                    ;;
            esac
        done
    done
}

# man pages from man/, as man expects them (MANPATH/man1/NAME.1).
mkdir -p "$tmp/man/man1"
for page in man/*.1; do
    ln -s "$PWD/$page" "$tmp/man/man1/"
done
man_opt=()
if ! command -v man >/dev/null; then
    say "man is not installed: Documentation=man: references are not checked (apt-get install man-db)"
    man_opt=(--man=no)
fi

# verify_root ROOT UNIT_NAME...: prints what verify says; returns its status,
# or 1 when it printed anything.
verify_root() {
    local root=$1 out rc=0
    shift
    out=$(cd "$tmp" && MANPATH="$tmp/man" systemd-analyze verify "${man_opt[@]}" --root="$root" "$@" 2>&1) || rc=$?
    [ -n "$out" ] && printf '%s\n' "$out"
    [ "$rc" -eq 0 ] && [ -z "$out" ]
}

# Control 1: a good unit must pass, or systemd-analyze does not work here.
mkdir -p "$tmp/good"
cat >"$tmp/good/walship-control@.service" <<'EOF'
[Unit]
Description=control: a valid unit
Documentation=man:walship-server(1)
After=network-online.target
[Service]
ExecStart=/usr/bin/walship server -D /var/lib/walship/%i
ExecReload=/bin/kill -HUP $MAINPID
[Install]
WantedBy=multi-user.target
EOF
make_root "$tmp/root-good" "$tmp/good/walship-control@.service"
if ! good=$(verify_root "$tmp/root-good" /etc/systemd/system/walship-control@.service); then
    say "SKIPPED: systemd-analyze verify cannot check even a valid unit on this machine:"
    printf '%s\n' "$good" | sed 's/^/    /'
    exit 0
fi

# Control 2: a broken unit must be caught, or a pass would mean nothing.
mkdir -p "$tmp/bad"
cat >"$tmp/bad/walship-control@.service" <<'EOF'
[Unit]
Description=control: a broken unit (an unknown key, a missing command, a missing man page)
Documentation=man:walship-nonesuch(1)
[Service]
ExecStart=/usr/bin/walship server -D /var/lib/walship/%i
ExecReload=/usr/bin/walship-nonesuch
RestartSecs=5
EOF
make_root "$tmp/root-bad" "$tmp/bad/walship-control@.service"
if verify_root "$tmp/root-bad" /etc/systemd/system/walship-control@.service >/dev/null; then
    say "FAILED: systemd-analyze verify accepted a deliberately broken unit; it cannot be trusted to check contrib/systemd here"
    exit 1
fi

# The units themselves.
units=(contrib/systemd/*)

# verify does not mind a reference to a unit that does not exist (a timer
# activating a misspelt service, a Conflicts= naming nothing), so: every
# walship unit these units name, and the service each timer activates, must
# be one of them.
broken=0
for unit in "${units[@]}"; do
    refs=$(grep -v '^[[:space:]]*[#;]' "$unit" | grep -oE 'walship[A-Za-z0-9_-]*@(%i)?\.(service|timer|socket|path|target)' | sed 's/@%i\./@./' | sort -u || true)
    if [[ $unit == *.timer ]] && ! grep -q '^Unit=' "$unit"; then
        refs+=" $(basename "${unit%.timer}").service"
    fi
    for ref in $refs; do
        if [ ! -e "contrib/systemd/$ref" ]; then
            say "$unit names $ref, which is not in contrib/systemd"
            broken=1
        fi
    done
done
if [ "$broken" -ne 0 ]; then
    say "FAILED: contrib/systemd refers to units it does not have"
    exit 1
fi

make_root "$tmp/root" "${units[@]}"
names=()
for unit in "${units[@]}"; do
    names+=("/etc/systemd/system/$(basename "$unit")")
done
if ! verify_root "$tmp/root" "${names[@]}"; then
    say "FAILED: systemd-analyze verify found problems in contrib/systemd (above)"
    exit 1
fi
say "OK: systemd-analyze verify passes on ${units[*]} ($(systemd-analyze --version | head -1))"

# The user and directories they need: applied for real, inside a throwaway
# root, so a syntax error or an unknown user name fails.
if command -v systemd-sysusers >/dev/null && command -v systemd-tmpfiles >/dev/null; then
    mkdir -p "$tmp/sysroot/etc"
    if ! out=$(systemd-sysusers --root="$tmp/sysroot" "$PWD/contrib/sysusers.d/walship.conf" 2>&1 &&
        systemd-tmpfiles --root="$tmp/sysroot" --create "$PWD/contrib/tmpfiles.d/walship.conf" 2>&1); then
        printf '%s\n' "$out"
        say "FAILED: contrib/sysusers.d or contrib/tmpfiles.d (above)"
        exit 1
    fi
    for d in /var/lib/walship /srv/walship-archive; do
        if [ "$(stat -c %U "$tmp/sysroot$d" 2>/dev/null)" = root ] || [ ! -d "$tmp/sysroot$d" ]; then
            say "FAILED: contrib/tmpfiles.d did not create $d owned by walship"
            exit 1
        fi
    done
    say "OK: contrib/sysusers.d and contrib/tmpfiles.d apply cleanly"
else
    say "systemd-sysusers or systemd-tmpfiles missing: contrib/sysusers.d and contrib/tmpfiles.d not checked"
fi
