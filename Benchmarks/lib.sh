# Sourced by the benchmark scripts (after they set ROOT): where the release binaries are and
# how they are built, a work directory whose processes are stopped on exit, and ports.

BIN="$ROOT/.build-release/release"

build_release() { # product...
    local product
    for product in "$@"; do
        (cd "$ROOT" && swift build -c release --scratch-path .build-release --product "$product" >&2)
    done
}

require_files() { # script-name file...
    local script=$1 file
    shift
    for file in "$@"; do
        [ -e "$file" ] || { echo "$script: $file is missing (build it or drop --no-build)" >&2; exit 1; }
    done
}

# Sets WORK (a new directory) and PIDS: every pid added to PIDS is stopped on exit, and WORK
# removed. Raises the open-file limit for the connection storms.
make_workdir() { # label
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/custody-$1.XXXXXX")
    PIDS=()
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
}

cleanup() {
    # SIGTERM first; a parent that blocks SIGTERM passes the mask on, so SIGKILL after 5 s.
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_port() { # port seconds
    local deadline=$((SECONDS + $2))
    while [ $SECONDS -lt $deadline ]; do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

wait_line() { # file text seconds
    for _ in $(seq 1 $(($3 * 10))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    return 1
}
