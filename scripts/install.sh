#!/usr/bin/env bash
# Builds s3vol (release) and installs it for the whole machine:
#
#   $PREFIX/bin/s3vol          the command (PREFIX defaults to /usr/local)
#   /sbin/mount.s3vol          mount(8)'s helper for fstab lines and `mount -t s3vol`
#   /sbin/mount.fuse.s3vol     the same for type fuse.s3vol
#
# The helpers are links to the s3vol binary, which acts as the helper when run under
# those names. Run as root; run it again after pulling to update.
source "$(dirname "$0")/lib.sh"
cd "$S3VOL_ROOT"

PREFIX="${PREFIX:-/usr/local}"
[ "$(id -u)" -eq 0 ] || die "run as root: it installs into $PREFIX/bin and /sbin"

ensure_rust
ensure_fuse

log "building s3vol (release)"
cargo build --release --locked --quiet
install -D -m 0755 target/release/s3vol "$PREFIX/bin/s3vol"
for helper in mount.s3vol mount.fuse.s3vol; do
    ln -sfn "$PREFIX/bin/s3vol" "/sbin/$helper"
done
log "installed $PREFIX/bin/s3vol, /sbin/mount.s3vol and /sbin/mount.fuse.s3vol ($("$PREFIX/bin/s3vol" --version))"
