# The filesystems the benchmark compares, each mounted as its users run it, against
# the S3 server described by S3_ENDPOINT, AWS_REGION, AWS_ACCESS_KEY_ID and
# AWS_SECRET_ACCESS_KEY (what scripts/garage.sh start prints). Sourced by
# scripts/bench.sh, and by the test that mounts each of them against the test
# servers (e2e_bench), so that a setting of the servers the peers disagree with
# fails the suite rather than the next benchmark.
#
# Needs: $mnt (an empty mountpoint), $work (a directory for passwords, logs and
# caches), $S3VOL (the s3vol binary); for s3vol-cse, CSE_KMS_ENDPOINT and CSE_KEY.
# The bucket is $BUCKET (default: bench). A system's local cache is under
# $work unless $CACHE names another directory (each of many mounts needs its own).

# Writes what the systems need before the first mount.
prepare_systems() {
    printf '%s:%s\n' "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >"$work/s3fs.passwd"
    chmod 600 "$work/s3fs.passwd"
}

# mount_system SYSTEM [rw|cached]: read-only unless asked, each system as users
# run it (rclone writes need its write cache). "cached" turns on the peers' local
# data caches; s3vol's block cache is on by default.
mount_system() {
    local mode=${2:-} rw= cached= bucket=${BUCKET:-bench}
    [ "$mode" = rw ] && rw=rw
    [ "$mode" = cached ] && cached=1
    case "$1" in
    s3vol-cse)
        # Under cse/, so its paths are those of the others.
        AWS_ENDPOINT_URL_KMS=$CSE_KMS_ENDPOINT "$S3VOL" mount "$bucket/cse" "$mnt" \
            --endpoint-url "$S3_ENDPOINT" --force-path-style --cse-kms-key-id "$CSE_KEY" \
            --log-file "$work/s3vol.log" --log-level warn --cache-dir "${CACHE:-$work/s3vol-cache}" \
            ${rw:+--read-write} ${S3VOL_OPTIONS:-} ;;
    s3vol | s3vol-nocache)
        "$S3VOL" mount "$bucket" "$mnt" --endpoint-url "$S3_ENDPOINT" --force-path-style \
            --log-file "$work/s3vol.log" --log-level warn --cache-dir "${CACHE:-$work/s3vol-cache}" \
            ${rw:+--read-write} $([ "$1" = s3vol ] || echo --no-cache) ${S3VOL_OPTIONS:-} ;;
    s3fs)
        # s3fs signs for the region its endpoint option names.
        s3fs "$bucket" "$mnt" -o "${rw:-ro},url=$S3_ENDPOINT,use_path_request_style,endpoint=$AWS_REGION" \
            -o passwd_file="$work/s3fs.passwd" -o logfile="$work/s3fs.log" \
            ${cached:+-o use_cache="$work/s3fs-cache"} ;;
    rclone)
        # rclone refuses to start with AWS_CA_BUNDLE pointing at a bundle it cannot use.
        env -u AWS_CA_BUNDLE RCLONE_CONFIG_G_TYPE=s3 RCLONE_CONFIG_G_PROVIDER=Other \
            RCLONE_CONFIG_G_ENDPOINT="$S3_ENDPOINT" RCLONE_CONFIG_G_REGION="$AWS_REGION" \
            RCLONE_CONFIG_G_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
            RCLONE_CONFIG_G_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" \
            rclone mount "g:$bucket" "$mnt" --daemon --log-file "$work/rclone.log" \
            $([ -n "$rw" ] || echo --read-only) --cache-dir "${CACHE:-$work/rclone-cache}" \
            ${rw:+--vfs-cache-mode writes --vfs-write-back 0s} \
            ${cached:+--vfs-cache-mode full} ;;
    *) die "no system named $1" ;;
    esac || die "$1 did not mount (see the logs in $work)"
    for _ in $(seq 1 100); do mountpoint -q "$mnt" && return 0; sleep 0.1; done
    die "$1 did not mount (see the logs in $work)"
}

# The PIDs of the daemon serving $mnt: one process for s3fs and rclone, two for
# s3vol (its supervisor, which holds the FUSE connection, and the worker that
# serves it); resources are counted over all of them.
daemon_pids() {
    local pid re argv0
    # The mountpoint as a whole argument (v1 is not v10), its characters literal.
    re=$(printf '%s' "$mnt" | sed 's/[][\.*^$+?(){}|]/\\&/g')
    for pid in $(pgrep -f -- "$re( |\$)"); do
        [ "$pid" != "$$" ] || continue
        argv0=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -1) || continue
        case "${argv0##*/}" in s3vol | s3fs | rclone) echo "$pid" ;; esac
    done
    return 0
}

# release_system: unmounts $mnt, waits for its daemon to exit and removes the
# peers' caches, so that each mount starts with an empty one.
release_system() {
    local pids pid alive
    pids=$(daemon_pids)
    umount "$mnt" || die "umount $mnt failed"
    # Until every one of them is gone (kill -0 of several fails when any is).
    for _ in $(seq 1 100); do
        alive=0
        for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 1 ] || break
        sleep 0.1
    done
    # A daemon left behind would count in the next mount's CPU and memory.
    [ "$alive" = 0 ] || die "the daemon of $mnt still runs 10 s after its unmount"
    rm -rf "$work/s3fs-cache" "$work/rclone-cache"
}

# check_system SYSTEM: mounts SYSTEM read-only, with its cache and read-write in
# turn: each mount reads check/seed.bin (which must hold what $work/seed.bin
# holds) and lists check/; the read-write one writes $work/seed.bin to
# check/SYSTEM.bin and removes check/SYSTEM.gone. Fails loudly at the first thing
# that does not work.
check_system() {
    local mode
    for mode in ro cached rw; do
        mount_system "$1" "${mode#ro}"
        cmp "$work/seed.bin" "$mnt/check/seed.bin" || die "$1 ($mode) did not read check/seed.bin whole"
        ls -l "$mnt/check" >/dev/null || die "$1 ($mode) did not list check/"
        if [ "$mode" = rw ]; then
            cp "$work/seed.bin" "$mnt/check/$1.bin" || die "$1 did not write check/$1.bin"
            rm "$mnt/check/$1.gone" || die "$1 did not remove check/$1.gone"
        fi
        release_system
    done
}
