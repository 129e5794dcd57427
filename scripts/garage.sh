#!/usr/bin/env bash
# Start or stop a single-node Garage server on free 127.0.0.1 ports.
#
#   scripts/garage.sh start DIR [BUCKET...]  starts Garage with its state in DIR, creates
#                                            the buckets, and prints shell assignments:
#                                            S3_ENDPOINT, AWS_ACCESS_KEY_ID,
#                                            AWS_SECRET_ACCESS_KEY, AWS_REGION, GARAGE_PID
#   scripts/garage.sh stop DIR               stops it (DIR is kept)
#
# GARAGE_DB_ENGINE=sqlite picks Garage's SQLite metadata store: slower than the
# default LMDB, but it holds keys up to S3's 1024 bytes (LMDB stops near 500).
source "$(dirname "$0")/lib.sh"

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 start|stop DIR [BUCKET...]"
shift 2

case "$cmd" in
start)
    ensure_garage
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    # A server that lost a port to another started at the same moment exits, or
    # goes on without it, or exits later: each of its three ports must be its
    # own (a port it let go of is another server's to take, and requests meant
    # for this one reach that one); start again on others.
    for attempt in 1 2 3 4 5; do
        s3_port=$(free_port); rpc_port=$(free_port); admin_port=$(free_port)
        cat >"$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "${GARAGE_DB_ENGINE:-lmdb}"
metadata_fsync = false
data_fsync = false
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
TOML
        RUST_LOG=warn setsid "$GARAGE_BIN" -c "$dir/garage.toml" server >"$dir/garage.log" 2>&1 &
        echo $! >"$dir/pid"
        wait_for_ports "$(cat "$dir/pid")" Garage "$s3_port" "$rpc_port" "$admin_port" && break
        [ "$attempt" = 5 ] && die "Garage did not start; see $dir/garage.log"
    done
    g() { "$GARAGE_BIN" -c "$dir/garage.toml" "$@"; }
    node=""
    for _ in $(seq 1 100); do
        node=$(g node id -q 2>/dev/null | cut -d@ -f1) && [ -n "$node" ] && break
        sleep 0.1
    done
    [ -n "$node" ] || die "Garage did not report its node id; see $dir/garage.log"
    g layout assign -z z1 -c 10G "$node" >/dev/null
    g layout apply --version 1 >/dev/null
    key_id="GK$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    secret="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    for _ in $(seq 1 100); do
        g key import --yes -n s3vol "$key_id" "$secret" >/dev/null 2>&1 && break
        sleep 0.1
    done
    g key allow --create-bucket "$key_id" >/dev/null
    for bucket in "$@"; do
        g bucket create "$bucket" >/dev/null
        g bucket allow --read --write --owner "$bucket" --key "$key_id" >/dev/null
    done
    if ! listens_on "$(cat "$dir/pid")" "$s3_port"; then
        kill "$(cat "$dir/pid")" 2>/dev/null
        die "Garage stopped serving while being set up; see $dir/garage.log"
    fi
    cat <<OUT
S3_ENDPOINT=http://127.0.0.1:$s3_port
AWS_ACCESS_KEY_ID=$key_id
AWS_SECRET_ACCESS_KEY=$secret
AWS_REGION=us-east-1
GARAGE_PID=$(cat "$dir/pid")
OUT
    ;;
stop)
    [ -f "$dir/pid" ] && kill "$(cat "$dir/pid")" 2>/dev/null || true
    ;;
*) die "usage: $0 start|stop DIR [BUCKET...]" ;;
esac
