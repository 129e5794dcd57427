#!/usr/bin/env bash
# Installs what the tests need (fuse3, moto in a venv, Garage, s3fs, rclone, a Debian rootfs with
# systemd, a Kubernetes schema validator, AWS's S3 Encryption Client and gRPC for Python) and runs
# every test: formatting, lints, unit tests, filesystem tests on the memory store, the store
# conformance suite and the end-to-end mounts against local servers.
source "$(dirname "$0")/lib.sh"
cd "$S3VOL_ROOT"

ensure_rust
ensure_fuse
ensure_test_tools
ensure_moto
ensure_kubernetes_validate
ensure_grpcio
ensure_s3_encryption_client
ensure_garage
ensure_pjdfstest
ensure_systemd_rootfs
export S3VOL_TOOLS
# A fresh clone builds everything once: incremental state would only add a few GB
# to the build directory.
export CARGO_INCREMENTAL=0

log "cargo fmt --check"
cargo fmt --check
log "cargo clippy"
cargo clippy --quiet --all-targets -- -D warnings
log "cargo test (all tests, including those against local servers)"
# Mount tests are I/O-bound and each starts its own server; a few at a time is
# plenty on two cores.
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
# The soak is scripts/soak.sh's, not the test run's.
cargo test --quiet --no-fail-fast --all-targets -- --include-ignored --skip soak --test-threads 4 2>&1 | tee "$out" || status=$?
# One closing line over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "all tests: %d passed, %d failed\n", p, f }' "$out"
exit "$status"
