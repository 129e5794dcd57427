#!/usr/bin/env bash
# Builds the Debian package, target/debian/s3vol_VERSION-1_amd64.deb (VERSION is
# the crate's), and checks it with lintian:
#
#   bash scripts/package.sh                 a release build (--locked), packaged
#   S3VOL_BIN=PATH bash scripts/package.sh  packages that binary instead (the
#                                           tests package the build they test)
#
# The package holds /usr/bin/s3vol; /sbin/mount.s3vol and /sbin/mount.fuse.s3vol
# (links to it, for mount(8) and /etc/fstab); man pages s3vol(8), one per
# command (s3vol-mount(8), ...) and mount.s3vol(8), generated from the command
# line's definitions; bash and zsh completions; and the docs. It depends on
# fuse3 and ca-certificates. Builds are reproducible: file times are the
# commit's (SOURCE_DATE_EPOCH), and `s3vol --version` names the commit.
source "$(dirname "$0")/lib.sh"
cd "$S3VOL_ROOT"

ensure_rust
ensure_packaging

if [ -z "${S3VOL_BIN:-}" ]; then
    log "building s3vol (release, --locked)"
    cargo build --release --locked --quiet --bin s3vol
    S3VOL_BIN=target/release/s3vol
fi
[ -x "$S3VOL_BIN" ] || die "$S3VOL_BIN is not an executable s3vol"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"

assets=target/package-assets
rm -rf "$assets"
mkdir -p "$assets/sbin"
install -m 0755 "$S3VOL_BIN" "$assets/s3vol"
# Debian ships binaries without their symbols.
strip --strip-unneeded --remove-section=.comment "$assets/s3vol"
"$assets/s3vol" generate-assets "$assets"
gzip -9n "$assets"/man/*.8
for helper in mount.s3vol mount.fuse.s3vol; do
    ln -s /usr/bin/s3vol "$assets/sbin/$helper"
done
ln -s mount.s3vol.8.gz "$assets/man/mount.fuse.s3vol.8.gz"
# The package's version is the crate's; its changelog names the commit.
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
{
    echo "s3vol ($version-1) unstable; urgency=medium"
    echo
    echo "  * Built from $("$assets/s3vol" --version | sed 's/^s3vol //')."
    echo
    echo " -- The s3vol developers <maintainers@s3vol.dev>  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} >"$assets/changelog"

log "packaging $("$assets/s3vol" --version)"
mkdir -p target/debian
deb=$("$CARGO_DEB_BIN" --no-build --locked --quiet --output target/debian/)
[ -f "$deb" ] || die "cargo-deb made no package"
log "checking $deb with lintian"
# Errors fail the build; warnings are shown.
lintian --fail-on error "$deb"
realpath "$deb"
