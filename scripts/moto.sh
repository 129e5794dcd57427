#!/usr/bin/env bash
# Start or stop a moto server (S3, STS, IAM in one endpoint) on a free 127.0.0.1 port,
# behind scripts/moto_server.py, which makes expired session credentials fail.
#
#   scripts/moto.sh start DIR   prints S3_ENDPOINT and MOTO_PID as shell assignments
#   scripts/moto.sh stop DIR
source "$(dirname "$0")/lib.sh"

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 start|stop DIR"
case "$cmd" in
start)
    ensure_moto
    mkdir -p "$dir"
    # A server that lost its port to another started at the same moment exits;
    # start again on another.
    for attempt in 1 2 3 4 5; do
        port=$(free_port)
        setsid "$MOTO_VENV/bin/python" "$(dirname "$0")/moto_server.py" "$port" >"$dir/moto.log" 2>&1 &
        echo $! >"$dir/pid"
        wait_for_ports "$(cat "$dir/pid")" moto "$port" && break
        [ "$attempt" = 5 ] && die "moto did not start; see $dir/moto.log"
    done
    echo "S3_ENDPOINT=http://127.0.0.1:$port"
    echo "MOTO_PID=$(cat "$dir/pid")"
    ;;
stop)
    [ -f "$dir/pid" ] && kill "$(cat "$dir/pid")" 2>/dev/null || true
    ;;
*) die "usage: $0 start|stop DIR" ;;
esac
