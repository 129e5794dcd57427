#!/usr/bin/env bash
# Installs what the tests need (fuse3, moto in a venv, Garage, s3fs, rclone, a Debian rootfs with
# systemd, a Kubernetes schema validator, AWS's S3 Encryption Client and gRPC for Python) and runs
# every test in two tiers: first the fast one (formatting, lints, unit tests, the filesystem on
# the memory store, the layout check: nothing but Rust needed), then the end-to-end one (the
# store conformance suite, mounts through the kernel, local servers).
source "$(dirname "$0")/lib.sh"
cd "$S3VOL_ROOT"

ensure_rust
ensure_nextest
# A fresh clone builds everything once: incremental state would only add a few GB
# to the build directory.
export CARGO_INCREMENTAL=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0

# The fast tier needs nothing but Rust: no root, no server, no mount.
log "fast tier: cargo fmt --check"
cargo fmt --check
log "fast tier: cargo clippy"
cargo clippy --quiet --all-targets -- -D warnings
log "fast tier: unit tests, the filesystem on the in-memory store, the layout check"
cargo nextest run --lib --bins --test in_process --test layout 2>&1 | tee "$out" || status=$?
# summary TIERS: adds up nextest's summary lines ("Summary [ 12.3s] 234 tests
# run: 230 passed (2 slow), 2 failed, 1 exec failed, 1 timed out, 0 skipped"),
# colours or not, and says so when a tier that ran printed none (it stopped
# before its tests: see the log above).
summary() {
    awk -v tiers="$1" '{ gsub(/\033\[[0-9;]*m/, "") }
    /Summary \[/ {
        n++
        for (i = 2; i <= NF; i++) {
            if ($i ~ /^passed/) p += $(i - 1)
            else if ($i ~ /^failed/) f += ($(i - 1) == "exec") ? $(i - 2) : $(i - 1)
            else if ($i == "timed") f += $(i - 1)
        }
    } END {
        printf "all tests: %d passed, %d failed", p, f
        if (n < tiers) printf " (a tier printed no summary: it stopped before its tests ran; see above)"
        printf "\n"
    }' "$out"
}
if [ "$status" -ne 0 ]; then
    summary 1
    die "the fast tier failed; the end-to-end tier was not run"
fi

ensure_fuse
ensure_test_tools
ensure_moto
ensure_kubernetes_validate
ensure_grpcio
ensure_prometheus_client
ensure_packaging
ensure_s3_encryption_client
ensure_garage
ensure_pjdfstest
ensure_systemd_rootfs
export S3VOL_TOOLS

log "full tier: end to end, through the kernel and against local servers"
# Mount tests are I/O-bound and each starts its own server; a few at a time is
# plenty on two cores. The soak is scripts/soak.sh's, not the test run's.
cargo nextest run --test e2e --run-ignored all -E 'not test(=e2e_role::soak)' --test-threads 4 2>&1 | tee -a "$out" || status=$?
# One closing line over both tiers.
summary 2
exit "$status"
