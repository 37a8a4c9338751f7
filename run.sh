#!/usr/bin/env bash
# Run PacketTracer: create/refresh .venv on first use (or when requirements change), then run
# main.py with the given arguments, re-executing with sudo when live capture needs root.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
py="${PYTHON:-python3}"

needs_root() {
    # Live capture needs root; reading a file (-r), listing, history and help do not.
    local a
    for a in "$@"; do
        case "$a" in
            --test|-r|--read|--read=*|--list|--sessions|--session|--session=*|-h|--help|--version|--relay-server) return 1 ;;
        esac
    done
    return 0
}

if [ "$(id -u)" -ne 0 ] && needs_root "$@"; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo -E "$0" "$@"
    fi
    echo "packettracer: live capture needs root: run with sudo, or read a file with -r FILE" >&2
    exit 1
fi

stamp="$venv/.requirements.sha256"
want="$(cat "$here/requirements.txt" "$here/requirements-dev.txt" 2>/dev/null | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "packettracer: setting up $venv (first run or requirements changed)..." >&2
    if ! "$py" -c "import ensurepip, venv" >/dev/null 2>&1; then
        # Debian/Ubuntu split venv support out of python3; install it when we may.
        if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
        else
            echo "packettracer: python3 venv support is missing: sudo apt-get install python3-venv" >&2
            exit 1
        fi
    fi
    "$py" -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip >&2
    "$venv/bin/pip" install --quiet -r "$here/requirements-dev.txt" >&2
    echo "$want" > "$stamp"
    rm -f "$venv/.compiled"
    if [ -n "${SUDO_UID:-}" ]; then chown -R "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$venv" 2>/dev/null || true; fi
fi
# The parser's fast path and the pcap record loop, compiled (capture/_c*.pyx) with the venv's
# Cython for the venv's Python: built again when a source, the requirements or the venv change
# (the state file in .venv holds the sources' checksum). That needs a C compiler and the Python
# headers (Debian: gcc python3-dev); without them the same code runs in pure Python, ~2x slower
# to parse, and a failed build is not retried until something changes.
compiled_state="$venv/.compiled"
sources_sum="$(cat "$here"/capture/_c*.pyx | sha256sum | cut -d' ' -f1)"
state="$(cat "$compiled_state" 2>/dev/null || true)"
missing=0
for pyx in "$here"/capture/_c*.pyx; do
    so=("${pyx%.pyx}".cpython-*.so)
    [ -e "${so[0]}" ] || missing=1
done
if [ "$state" != "failed $sources_sum" ] && { [ "$state" != "ok $sources_sum" ] || [ "$missing" = 1 ]; }; then
    tmp="$(mktemp -d)"
    if (cd "$tmp" && "$venv/bin/cythonize" -f -q -i -3 "$here"/capture/_c*.pyx) >"$tmp/log" 2>&1; then
        echo "ok $sources_sum" > "$compiled_state"
        if [ -n "${SUDO_UID:-}" ]; then chown "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$here"/capture/_c*.* "$compiled_state" 2>/dev/null || true; fi
        # setuptools also leaves a copy under build/lib.*/ at the project's root: only ours goes
        rm -f "$here"/build/lib.*/capture/_c*.so
        rmdir "$here"/build/lib.*/capture "$here"/build/lib.* "$here/build" 2>/dev/null || true
    else
        cp "$tmp/log" "$venv/compile.log"
        rm -f "$here"/capture/_c*.so  # an older build must not run with newer Python code
        echo "failed $sources_sum" > "$compiled_state"
        echo "packettracer: the compiled parser was not built (needs gcc and python3-dev; see $venv/compile.log; delete $compiled_state to retry): parsing in pure Python" >&2
    fi
    rm -rf "$tmp"
fi
if [ "${1:-}" = "--test" ]; then
    shift
    cd "$here"
    exec "$venv/bin/python" -m pytest "$@"
fi
exec "$venv/bin/python" "$here/main.py" "$@"
