#!/usr/bin/env bash
# Soak test (not part of scripts/test.sh): mounts a read-write volume through an
# assumed role whose sessions last only S3VOL_SOAK_SESSION seconds, behind the
# test harness's fault-injecting proxy (for S3 and STS alike), and runs a mixed
# workload of writes (small files and multipart ones), verified reads, listings,
# renames and deletes for the time given. Every interval it prints operations,
# errors seen by the workload, credential renewals, the daemon's RSS, and the
# requests and faults that went through the proxy; it fails if the workload saw
# any error or if expired credentials were ever sent.
#
#   bash scripts/soak.sh [SECONDS] [FAULT_SHARE]        # default: 600 s, 0.05
#   S3VOL_SOAK_SESSION=60 S3VOL_SOAK_WORKERS=4 bash scripts/soak.sh 3600 0.1
#
# It runs the release build of s3vol against moto, installed as for the tests.
source "$(dirname "$0")/lib.sh"
cd "$S3VOL_ROOT"

export S3VOL_SOAK_SECONDS=${1:-600}
export S3VOL_SOAK_FAULTS=${2:-0.05}
case "$S3VOL_SOAK_SECONDS$S3VOL_SOAK_FAULTS" in
*[!0-9.]*) die "usage: scripts/soak.sh [SECONDS] [FAULT_SHARE], e.g. scripts/soak.sh 600 0.05" ;;
esac

ensure_rust
ensure_fuse
ensure_moto
export S3VOL_TOOLS

log "building the release binary"
cargo build --release --locked --quiet
export S3VOL_BIN="$S3VOL_ROOT/target/release/s3vol"
log "soaking for ${S3VOL_SOAK_SECONDS}s with ${S3VOL_SOAK_FAULTS} of requests failing"
cargo test --quiet --test e2e -- --ignored --exact e2e_role::soak --nocapture
