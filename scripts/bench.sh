#!/usr/bin/env bash
# Benchmark s3vol against the S3 filesystems users would otherwise pick (s3fs-fuse and
# rclone mount, from Debian's packages) and a raw parallel S3 client, all against one
# local Garage server in one run. Prints one table: the median of RUNS runs of each
# workload for each system, and each peer's ratio to s3vol.
#
#   RUNS=3 bash scripts/bench.sh
#   RUNS=1 WORKLOADS="seq_write small_creates" bash scripts/bench.sh
#   RUNS=1 SYSTEMS=s3vol S3VOL_OPTIONS="--max-memory 96MiB" bash scripts/bench.sh
#   SYSTEMS=s3vol S3VOL_BIN=/path/to/another/s3vol bash scripts/bench.sh
#
# Systems: s3vol with its defaults (block cache on), s3vol --no-cache (on the cold
# read rows only, where the cache could cost something), s3vol with client-side
# encryption (--cse-kms-key-id, a KMS key of moto's on 127.0.0.1; on the cold
# sequential read, the cold random reads, the first bytes of a 32 MiB file, the
# durable write and their CPU rows, over objects it wrote itself), s3fs-fuse and
# rclone mount as their users run them, and for the data rows a raw parallel S3
# client (the ceiling). Every row says what it measures
# (see docs/BENCHMARK.md):
#
# - cold rows start from a fresh mount and an empty page cache: 1 GiB sequential
#   read, 4 readers of 4 different 256 MiB objects at once, 4 KiB random reads,
#   1,000 files of 64 KiB in 10 directories read by 8 `cat`s at once, and the time
#   to open and read 4 KiB of 100 objects one after another;
# - warm rows read the 1 GiB object a second time through the same mount, with each
#   system's local cache on (s3vol's default block cache, s3fs's use_cache,
#   rclone's --vfs-cache-mode full): once a moment later (for s3vol that is the
#   kernel's page cache, which it keeps for files it has read: FOPEN_KEEP_CACHE) and
#   once with the page cache dropped first, so the data comes from each system's
#   cache on local disk, for the 1 GiB object and for a 64 MiB one (the run fails if
#   s3vol reads any of their data from S3 again);
# - metadata rows: `ls -l` of 10,000 objects in one directory (s3vol's includes one
#   HEAD per file for the mode, owner and time its objects may carry, as s3fs's
#   does) and `find` over 10,000 objects in 100 directories;
# - write rows: a 1 GiB sequential write and 1,000 small-file creates, each timed
#   until the data is in S3 (rclone returns from close before uploading, so the
#   clock stops when the objects are listed with their full size; its writes run
#   with --vfs-write-back 0s, so that clock has no deliberate 5 s idle);
# - resources: each daemon's CPU seconds per GiB in the cold read and the durable
#   write (utime + stime from /proc/PID/stat over the timed part), the RSS of an
#   idle mount after `ls -l` of 10,000 objects, and the highest peak RSS (VmHWM) of
#   any row; for s3vol, over both its processes (the supervisor and the worker).
#
# Each system is mounted by scripts/systems.sh, with the settings its users would
# give; e2e_bench mounts each of them the same way against the test servers.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/systems.sh"
cd "$S3VOL_ROOT"
# Workloads run in command substitutions: there too a command that fails ends
# the workload, and the run with it, saying which.
shopt -s inherit_errexit
STEP="setting up"
trap 'printf "s3vol scripts: %s failed (line %s: %s)\n" "$STEP" "$LINENO" "$BASH_COMMAND" >&2' ERR

RUNS=${RUNS:-3}
RANDOM_READS=${RANDOM_READS:-300}
WARM_RANDOM_READS=${WARM_RANDOM_READS:-20000}

ensure_rust
ensure_fuse
ensure_garage
ensure_moto
apt_install s3fs rclone python3
[ "$(id -u)" -eq 0 ] || die "run as root: the benchmark drops the page cache between runs"

log "building s3vol and the raw client (release)"
# Built one after the other: the example would turn the test doubles on for the
# binary too (see Cargo.toml).
cargo build --release --locked --quiet --bin s3vol
cargo build --release --locked --quiet --example s3bench
# S3VOL_BIN measures another build of s3vol (an older commit's, say) with the
# same workloads; the table names it.
S3VOL="${S3VOL_BIN:-$S3VOL_ROOT/target/release/s3vol}"
S3BENCH="$S3VOL_ROOT/target/release/examples/s3bench"

garage_workspace bench bench

log "seeding: objects of 1 GiB, 64 MiB, 32 MiB and 4 of 256 MiB, 10,000 objects in one directory, 10,000 in 100 directories, 1,000 of 64 KiB in 10"
"$S3BENCH" put bench seq/1g.bin 1024 >/dev/null
"$S3BENCH" put bench seq/64m.bin 64 >/dev/null
"$S3BENCH" put bench seq/32m.bin 32 >/dev/null
for i in 0 1 2 3; do "$S3BENCH" put bench "par/p$i.bin" 256 >/dev/null; done
"$S3BENCH" put-many bench flat/ 10000 1
"$S3BENCH" put-many bench tree/ 10000 100
"$S3BENCH" put-many bench small64/ 1000 10 65536

# The encrypted volume's KMS: moto's (it takes Garage's keys as well).
eval "$("$S3VOL_ROOT/scripts/moto.sh" start "$work/moto" | sed 's/^S3_ENDPOINT=/CSE_KMS_ENDPOINT=/')"
# Everything goes at the end, the 1 GiB source file and the caches with it.
# The many volumes' mounts, if a failure left them, go before anything under them.
trap 'for v in "$work"/many/v*; do mountpoint -q "$v" && umount -l "$v"; done
      garage_workspace_cleanup; "$S3VOL_ROOT/scripts/moto.sh" stop "$work/moto"
      rm -rf --one-file-system "$work"' EXIT
CSE_KEY=$("$MOTO_VENV/bin/python" -c "import boto3, sys
print(boto3.client('kms', endpoint_url=sys.argv[1], region_name='us-east-1')
      .create_key()['KeyMetadata']['KeyId'])" "$CSE_KMS_ENDPOINT")

prepare_systems

# Workloads run in command substitutions (subshells), so peak RSS readings go to a
# file: one "system workload KiB" line per unmount.
unmount_system() {
    echo "$1 $WORKLOAD $(memory_kib VmHWM)" >>"$work/rss"
    release_system
}
# memory_kib FIELD [FILE]: the daemon's VmHWM or VmRSS in KiB (or, with FILE
# smaps_rollup, its Pss: resident memory with each page shared by N processes
# counted 1/N in each), over its processes.
memory_kib() {
    local pid
    for pid in $(daemon_pids); do awk -v f="$1:" '$1 == f {print $2}' "/proc/$pid/${2:-status}"; done |
        awk '{ s += $1 } END { print s + 0 }'
}

now() { date +%s.%N; }
# The CPU time the daemon has used, in clock ticks (utime + stime, all threads of
# all its processes).
cpu_ticks() {
    local pids pid
    pids=$(daemon_pids)
    [ -n "$pids" ] || die "no daemon serves $mnt: its CPU cannot be measured"
    for pid in $pids; do awk '{ print $14 + $15 }' "/proc/$pid/stat"; done |
        awk '{ s += $1 } END { print s + 0 }'
}
# record_cpu NAME SYSTEM TICKS_BEFORE GIB: appends the CPU seconds per GiB the
# daemon spent since TICKS_BEFORE (not for warm-up runs).
record_cpu() {
    [ -z "${WARMUP:-}" ] || return 0
    local after
    after=$(cpu_ticks)
    awk -v n="$1" -v s="$2" -v a="$3" -v b="$after" -v hz="$(getconf CLK_TCK)" -v g="$4" \
        'BEGIN { printf "%s %s %.2f\n", n, s, (b - a) / hz / g }' >>"$work/cpu"
}
speed() { awk -v a="$1" -v b="$2" -v mib="$3" 'BEGIN { printf "%.0f\n", mib / (b - a) }'; }
median() { sort -g | awk '{v[NR]=$1} END { if (NR) print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2 }'; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# Each function mounts fresh (cold metadata and data), measures once, unmounts.
cold_read() {  # MiB/s; records CPU s/GiB as cpu_read
    drop_caches; mount_system "$1"
    local t0 t1 cpu; cpu=$(cpu_ticks); t0=$(now)
    dd if="$mnt/seq/1g.bin" of=/dev/null bs=1M status=none
    t1=$(now); record_cpu cpu_read "$1" "$cpu" 1; unmount_system "$1"
    speed "$t0" "$t1" 1024
}
four_readers() {  # MiB/s of 4 readers of 4 different 256 MiB objects at once
    drop_caches; mount_system "$1"
    local t0 t1 i; t0=$(now)
    for i in 0 1 2 3; do dd if="$mnt/par/p$i.bin" of=/dev/null bs=1M status=none & done
    wait
    t1=$(now); unmount_system "$1"
    speed "$t0" "$t1" 1024
}
# random_pread FILE N: 4 KiB reads at N random aligned offsets; reads/s.
random_pread() {
    python3 - "$1" "$2" <<'PY'
import os, random, sys, time
path, n = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
size = os.fstat(fd).st_size
rng = random.Random(42)
offsets = [rng.randrange(0, size - 4096) // 4096 * 4096 for _ in range(n)]
t = time.time()
for off in offsets:
    assert len(os.pread(fd, 4096, off)) == 4096
print(f"{n / (time.time() - t):.0f}")
PY
}
random_reads() {  # reads/s
    drop_caches; mount_system "$1"
    random_pread "$mnt/seq/1g.bin" "$RANDOM_READS"
    unmount_system "$1"
}

# Object bytes s3vol has received from S3, from its statistics.
s3vol_downloaded() {
    "$S3VOL" stats --json "$mnt" | python3 -c 'import json, sys; print(json.load(sys.stdin)["bytes_from_s3"])'
}
# warm_mount SYSTEM [drop]: mounts with the local cache on and reads $FILE once
# through it. With "drop", the kernel's page cache is dropped afterwards, so what
# follows is served from the system's own cache on local disk; without it, each
# system serves a re-read as it would a moment after the first read.
warm_mount() {
    drop_caches; mount_system "$1" cached
    cat "$mnt/$FILE" >/dev/null
    [ "${2:-}" != drop ] || drop_caches
    [ "$1" != s3vol ] || downloaded_before=$(s3vol_downloaded)
}
# warm_check SYSTEM: for s3vol, fails the run if the warm workload read file data
# from S3. A lookup of the name once the metadata TTL has passed may read the
# first 64 KiB (the GET that answers a lookup of a file no listing has shown),
# nothing more.
warm_check() {
    [ "$1" = s3vol ] || return 0
    local downloaded; downloaded=$(s3vol_downloaded)
    [ $((downloaded - downloaded_before)) -le 65536 ] ||
        die "s3vol downloaded $((downloaded - downloaded_before)) bytes from S3 for a warm read"
}
# warm_seq SYSTEM [drop]: MiB/s of a re-read of the whole $FILE ($MIB MiB).
warm_seq() {
    warm_mount "$@"
    local t0 t1; t0=$(now)
    dd if="$mnt/$FILE" of=/dev/null bs=1M status=none
    t1=$(now)
    warm_check "$1"; unmount_system "$1"
    speed "$t0" "$t1" "$MIB"
}
FILE=seq/1g.bin MIB=1024
# warm_pread SYSTEM [drop]: reads/s of random 4 KiB reads of the read file.
warm_pread() {
    warm_mount "$@"
    random_pread "$mnt/seq/1g.bin" "$WARM_RANDOM_READS"
    warm_check "$1"; unmount_system "$1"
}
warm_read() { warm_seq "$1"; }          # MiB/s
warm_random() { warm_pread "$1"; }      # reads/s
disk_read() { warm_seq "$1" drop; }     # MiB/s
disk_read_64m() { FILE=seq/64m.bin MIB=64 warm_seq "$1" drop; } # MiB/s
disk_random() { warm_pread "$1" drop; } # reads/s
ls_l() {  # seconds
    drop_caches; mount_system "$1"
    local t0 t1 n; t0=$(now)
    n=$(ls -l "$mnt/flat" | wc -l)
    t1=$(now); unmount_system "$1"
    [ "$n" -eq 10001 ] || die "$1: ls -l showed $((n - 1)) entries, not 10000"
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f\n", b - a }'
}
find_tree() {  # seconds
    drop_caches; mount_system "$1"
    local t0 t1 n; t0=$(now)
    n=$(find "$mnt/tree" | wc -l)
    t1=$(now); unmount_system "$1"
    [ "$n" -eq 10101 ] || die "$1: find saw $n paths, not 10101"
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f\n", b - a }'
}

# idle_memory SYSTEM FIELD [FILE]: MiB of memory of a mount left idle after ls -l
# of 10,000 objects.
idle_memory() {
    drop_caches; mount_system "$1"
    local kib
    ls -l "$mnt/flat" >/dev/null
    sleep 2
    kib=$(memory_kib "$2" "${3:-status}")
    unmount_system "$1"
    awk -v k="$kib" 'BEGIN { printf "%.1f\n", k / 1024 }'
}
idle_rss() { idle_memory "$1" VmRSS; }
idle_pss() { idle_memory "$1" Pss smaps_rollup; }

small_files() {  # files/s: 1,000 files of 64 KiB in 10 directories, 8 cats at once, cold
    drop_caches; mount_system "$1"
    local t0 t1 bytes; t0=$(now)
    bytes=$(find "$mnt/small64" -type f -print0 | xargs -0 -P 8 -n 25 cat | wc -c)
    t1=$(now); unmount_system "$1"
    [ "$bytes" -eq $((1000 * 65536)) ] || die "$1: read $bytes bytes of the small files, not 64 KiB each"
    speed "$t0" "$t1" 1000
}
first_of_32m() {  # ms: open a 32 MiB object and read its first 4 KiB, cold
    drop_caches; mount_system "$1"
    python3 - "$mnt/seq/32m.bin" <<'PY'
import sys, time
t = time.time()
with open(sys.argv[1], "rb") as f:
    assert len(f.read(4096)) == 4096
print(f"{(time.time() - t) * 1000:.0f}")
PY
    unmount_system "$1"
}
first_byte() {  # ms per file: open and read 4 KiB of 100 objects one after another, cold
    drop_caches; mount_system "$1"
    python3 - "$mnt/small64" <<'PY'
import os, sys, time
root = sys.argv[1]
t = time.time()
for i in range(100):
    with open(os.path.join(root, f"d{i % 10:03}", f"f{i:05}"), "rb") as f:
        assert len(f.read(4096)) == 4096
print(f"{(time.time() - t) * 1000 / 100:.1f}")
PY
    unmount_system "$1"
}

# Writes read their data from a file in the page cache, so the source costs nothing.
# Each write starts with nothing dirty in the page cache: otherwise a run pays for
# writing back what the run before it (or the seeding) left. Each writes bytes
# the server has not seen: Garage stores a block it already holds once, so a
# second write of the same file would skip its disk, for every system but the
# encrypted one, whose bytes differ under each new data key.
seq_write() {  # MiB/s until the object is in S3; records CPU s/GiB as cpu_write
    restamp "$work/src-1g.bin" || die "restamping $work/src-1g.bin failed"
    sync
    mount_system "$1" rw
    local key t0 t1 cpu prefix= tag=0
    # The encrypted volume's objects are under cse/, each its tag longer.
    [ "$1" != s3vol-cse ] || { prefix=cse/; tag=16; }
    key="write/$1-$(date +%s%N).bin"
    mkdir -p "$mnt/write" || die "$1: mkdir $mnt/write failed"
    cat "$work/src-1g.bin" >/dev/null
    sync
    stored_mark
    cpu=$(cpu_ticks); t0=$(now)
    dd if="$work/src-1g.bin" of="$mnt/$key" bs=1M status=none || die "$1: dd into $key failed"
    "$S3BENCH" wait bench "$prefix$key" 1 $(((1 << 30) + tag)) || die "$1: $key never reached S3"
    t1=$(now); record_cpu cpu_write "$1" "$cpu" 1; unmount_system "$1"
    stored_since $((1 << 30)) "$1's 1 GiB write"
    # Each run's objects go, so that the server's disk does not grow with RUNS
    # (Garage frees their blocks ten minutes after).
    "$S3BENCH" delete bench "$prefix$key" || die "deleting $prefix$key failed"
    speed "$t0" "$t1" 1024
}
# stored_mark: notes the moment after which stored_since counts Garage's new blocks.
stored_mark() { touch "$work/stored.marker" || die "cannot touch $work/stored.marker"; }
# stored_since BYTES WHAT: fails the run unless the block files Garage wrote since
# stored_mark hold at least 99% of BYTES: a write of blocks the server already
# held costs it no disk, and measures less than a write of new data.
stored_since() {
    local grew
    # Garage deletes the blocks of objects deleted ten minutes before as it goes.
    grew=$(find "$work/garage/data" -ignore_readdir_race -type f -newer "$work/stored.marker" \
        -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
    [ "$grew" -ge $(($1 * 99 / 100)) ] ||
        die "$2 left $grew bytes of new (compressed) block files on the server, not $1: it wrote bytes the server already held, or did not reach it"
}
# restamp FILE: new random bytes every 64 KiB of FILE, so that no block of it,
# wherever a part or a block starts, is one a server already holds.
restamp() {
    python3 - "$1" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
for at in range(0, os.fstat(fd).st_size, 65536):
    os.pwrite(fd, os.urandom(16), at)
os.close(fd)
PY
}
small_creates() {  # files/s until all are in S3
    sync
    mount_system "$1" rw
    local dir t0 t1
    dir="small/$1-$(date +%s%N)"
    mkdir -p "$mnt/$dir" || die "$1: mkdir $mnt/$dir failed"
    stored_mark
    t0=$(now)
    python3 - "$mnt/$dir" <<'PY' || die "$1: writing the small files failed"
import os, sys
# Each file its own bytes (see seq_write).
blocks = [os.urandom(4096) for _ in range(1000)]
for i, block in enumerate(blocks):
    with open(os.path.join(sys.argv[1], f"f{i:04}"), "wb") as f:
        f.write(block)
PY
    "$S3BENCH" wait bench "$dir/" 1000 $((1000 * 4096)) || die "$1: the small files never reached S3"
    t1=$(now); unmount_system "$1"
    stored_since $((1000 * 4096)) "$1's 1000 small files"
    "$S3BENCH" delete bench "$dir/" || die "deleting $dir/ failed"
    speed "$t0" "$t1" 1000
}

# many_volumes SYSTEM: mounts $VOLUMES read-only volumes of the bucket, one after
# another, as a host of many tenants does, and leaves them idle. Sets
# RESULT[many_mount,SYSTEM] (the median milliseconds one mount took),
# RESULT[many_rss,SYSTEM] and RESULT[many_pss,SYSTEM] (resident MiB per volume
# at rest, over all of each one's processes: as `ps` shows it, and with the
# pages the volumes share, such as the program's own, counted once in all) and,
# for s3vol, RESULT[many_renew,s3vol]: the number of distinct
# seconds their next credential renewals fall in. s3vol's volumes start from
# expiring credentials (a profile's credential_process hands Garage's keys out
# for an hour), as role sessions are, so that each schedules a renewal.
VOLUMES=${VOLUMES:-100}
many_volumes() {
    local s=$1 i t0 t1 times=() kib=0 pss=0 at renew=() lead=()
    cat >"$work/credentials.sh" <<SH
#!/bin/sh
printf '{"Version": 1, "AccessKeyId": "%s", "SecretAccessKey": "%s", "Expiration": "%s"}\n' \
    "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" "\$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)"
SH
    chmod 700 "$work/credentials.sh"
    printf '[profile many]\ncredential_process = %s\n' "$work/credentials.sh" >"$work/aws-config"
    for i in $(seq 1 "$VOLUMES"); do
        mkdir -p "$work/many/v$i"
        t0=$(now)
        if [ "$s" = s3vol ]; then
            (unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
             AWS_CONFIG_FILE="$work/aws-config" AWS_PROFILE=many \
                 mnt="$work/many/v$i" CACHE="$work/many/cache$i" mount_system "$s")
        else
            mnt="$work/many/v$i" CACHE="$work/many/cache$i" mount_system "$s"
        fi
        t1=$(now)
        times+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f\n", (b - a) * 1000 }')")
    done
    sleep 2
    for i in $(seq 1 "$VOLUMES"); do
        kib=$((kib + $(mnt="$work/many/v$i" memory_kib VmRSS)))
        pss=$((pss + $(mnt="$work/many/v$i" memory_kib Pss smaps_rollup)))
        if [ "$s" = s3vol ]; then
            # When it renews, and how long before its credentials expire.
            at=$("$S3VOL" stats --json "$work/many/v$i" | python3 -c \
                'import json, sys, time; c = json.load(sys.stdin)["credentials"]
print(int(time.time()) + c["renews_in_seconds"], c["expires_in_seconds"] - c["renews_in_seconds"])')
            renew+=("${at% *}")
            lead+=("${at#* }")
        fi
    done
    for i in $(seq 1 "$VOLUMES"); do mnt="$work/many/v$i" release_system; done
    rm -rf "$work/many"
    RESULT[many_mount,$s]=$(printf '%s\n' "${times[@]}" | median)
    RESULT[many_rss,$s]=$(awk -v k="$kib" -v n="$VOLUMES" 'BEGIN { printf "%.1f\n", k / 1024 / n }')
    RESULT[many_pss,$s]=$(awk -v k="$pss" -v n="$VOLUMES" 'BEGIN { printf "%.1f\n", k / 1024 / n }')
    if [ "$s" = s3vol ]; then
        RESULT[many_renew,$s]=$(printf '%s\n' "${renew[@]}" | sort -u | wc -l)
        RESULT[many_lead,$s]=$(printf '%s\n' "${lead[@]}" | sort -n | sed -n '1p;$p' | paste -sd' ')
        log "  $VOLUMES volumes' renewals: ${RESULT[many_renew,$s]} distinct seconds; each renews between ${RESULT[many_lead,$s]/ / and } s before its credentials expire"
    fi
    log "  $s: ${RESULT[many_mount,$s]} ms per mount; per volume at rest ${RESULT[many_rss,$s]} MiB RSS, ${RESULT[many_pss,$s]} MiB PSS"
}

head -c 1G /dev/urandom >"$work/src-1g.bin"
: >"$work/rss"

# SYSTEMS="s3vol s3fs" runs some of them (s3vol always: the table is its).
read -ra SYSTEMS <<<"${SYSTEMS:-s3vol s3vol-nocache s3vol-cse s3fs rclone}"
[[ " ${SYSTEMS[*]} " == *" s3vol "* ]] || die "SYSTEMS must include s3vol"
if [[ " ${SYSTEMS[*]} " == *" s3vol-cse "* ]]; then
    log "seeding the encrypted volume: a 1 GiB object written through it"
    mount_system s3vol-cse rw
    mkdir -p "$mnt/seq"
    dd if="$work/src-1g.bin" of="$mnt/seq/1g.bin" bs=1M status=none
    head -c 32M "$work/src-1g.bin" >"$mnt/seq/32m.bin"
    umount "$mnt"
    "$S3BENCH" wait bench cse/seq/1g.bin 1 $(((1 << 30) + 16))
    "$S3BENCH" wait bench cse/seq/32m.bin 1 $(((32 << 20) + 16))
fi
# The rows where s3vol's block cache could cost something; s3vol --no-cache runs
# only these.
NOCACHE_ROWS=" cold_read four_readers random_reads small_files first_byte "
# The rows the encrypted volume runs: its data paths, and the reads that wait for
# a whole object's check (a random read of an unchecked 1 GiB, the first bytes of a
# 32 MiB file, which is checked whole at open).
CSE_ROWS=" cold_read random_reads first_of_32m seq_write "
# WORKLOADS="seq_write small_creates" bash scripts/bench.sh runs a subset.
read -ra WORKLOADS <<<"${WORKLOADS:-cold_read four_readers random_reads warm_read warm_random disk_read disk_read_64m disk_random small_files first_byte first_of_32m ls_l find_tree idle_rss idle_pss seq_write small_creates many_volumes}"
declare -A RESULT
for WORKLOAD in "${WORKLOADS[@]}"; do
    if [ "$WORKLOAD" = many_volumes ]; then
        # Once per system (s3vol with its defaults and the peers): $VOLUMES mounts
        # are their own repetitions.
        for s in "${SYSTEMS[@]}"; do
            [[ " s3vol s3fs rclone " == *" $s "* ]] || continue
            log "many_volumes on $s ($VOLUMES volumes)"; STEP="many_volumes on $s"
            many_volumes "$s"
        done
        continue
    fi
    for s in "${SYSTEMS[@]}"; do
        [ "$s" != s3vol-nocache ] || [[ "$NOCACHE_ROWS" == *" $WORKLOAD "* ]] || continue
        [ "$s" != s3vol-cse ] || [[ "$CSE_ROWS" == *" $WORKLOAD "* ]] || continue
        log "$WORKLOAD on $s (one warm-up run, then $RUNS runs)"
        # The first run of a workload after start-up is slower whichever system
        # makes it (the server and the kernel warm up); it is not counted.
        STEP="$WORKLOAD on $s (warm-up)"
        WARMUP=1 "$WORKLOAD" "$s" >/dev/null
        values=()
        for _ in $(seq 1 "$RUNS"); do
            STEP="$WORKLOAD on $s"
            value=$("$WORKLOAD" "$s")
            [ -n "$value" ] || die "$WORKLOAD on $s measured nothing"
            values+=("$value")
        done
        RESULT[$WORKLOAD,$s]=$(printf '%s\n' "${values[@]}" | median)
        echo "  runs: ${values[*]} -> median ${RESULT[$WORKLOAD,$s]}" >&2
    done
done

# raw_get KEYS: the raw client's MiB/s reading KEYS (comma-separated) at once, cold
# like the filesystems (the server reads its data files from disk, not page cache),
# median of RUNS after one warm-up, as for the systems.
raw_get() {
    local raw=()
    "$S3BENCH" get bench "$1" 16 >/dev/null
    for _ in $(seq 1 "$RUNS"); do drop_caches; raw+=("$("$S3BENCH" get bench "$1" 16)"); done
    printf '%s\n' "${raw[@]}" | median
}
STEP="the raw client and dd"
log "raw parallel GET of the 1 GiB object and of the 4 objects of 256 MiB ($RUNS runs)"
RAW_GET=$(raw_get seq/1g.bin)
RAW_GET4=$(raw_get par/p0.bin,par/p1.bin,par/p2.bin,par/p3.bin)

log "raw parallel multipart PUT of 1 GiB ($RUNS runs)"
raw=()
for i in $(seq 0 "$RUNS"); do
    sync
    stored_mark
    speed=$("$S3BENCH" put bench "raw/put-$i.bin" 1024 16) || die "the raw client's PUT failed"
    stored_since $((1 << 30)) "the raw client's 1 GiB write"
    "$S3BENCH" delete bench "raw/put-$i.bin" || die "deleting raw/put-$i.bin failed"
    [ "$i" -eq 0 ] || raw+=("$speed")  # run 0 warms up, as for the systems
done
RAW_PUT=$(printf '%s\n' "${raw[@]}" | median)

# local_read MIB: MiB/s of dd reading a local file of MIB MiB on the disk that
# holds the caches, page cache dropped: the ceiling of a re-read from a disk
# cache. Each run writes the file just before, as each system's cache is written
# by the read before its re-read (a disk reads slower what it has just taken).
# Median of RUNS after one warm-up.
local_read() {
    local file=$work/local-$1m.bin values=() t0 t1
    for i in $(seq 0 "$RUNS"); do
        rm -f "$file"; head -c "${1}M" "$work/src-1g.bin" >"$file"
        drop_caches; t0=$(now)
        dd if="$file" of=/dev/null bs=1M status=none
        t1=$(now)
        [ "$i" -eq 0 ] || values+=("$(speed "$t0" "$t1" "$1")")
    done
    rm -f "$file"
    printf '%s\n' "${values[@]}" | median
}
# The raw client's listing of flat/ and a HEAD of each of its 10,000 objects (32
# in flight), page cache dropped as for the systems: what `ls -l` with metadata
# asks of S3, without a filesystem.
log "raw listing and HEADs of 10,000 objects ($RUNS runs)"
raw=()
for i in $(seq 0 "$RUNS"); do
    drop_caches; seconds=$("$S3BENCH" heads bench flat/ 32)
    [ "$i" -eq 0 ] || raw+=("$seconds")  # run 0 warms up, as for the systems
done
RAW_HEADS=$(printf '%s\n' "${raw[@]}" | median)

log "dd of local files of 1 GiB and 64 MiB ($RUNS runs)"
LOCAL_READ=$(local_read 1024)
LOCAL_READ_64M=$(local_read 64)

# Higher is better for throughput; lower is better for times and memory. The ratio
# columns say how many times better s3vol (with its defaults) is (>1: s3vol wins).
row() {
    local name=$1 unit=$2 better=$3 key=$4 raw=${5:-}
    [ -n "${RESULT[$key,s3vol]:-}" ] || return 0  # not among the WORKLOADS run
    local v=${RESULT[$key,s3vol]}
    printf '| %-38s | %-7s | %8s | %10s | %8s | %8s | %8s | %8s | %8s | %8s |\n' "$name" "$unit" \
        "$v" "${RESULT[$key,s3vol-nocache]:--}" "${RESULT[$key,s3vol-cse]:--}" \
        "${RESULT[$key,s3fs]:--}" "${RESULT[$key,rclone]:--}" \
        "${raw:--}" "$(ratio "$better" "$v" "${RESULT[$key,s3fs]:-0}")" \
        "$(ratio "$better" "$v" "${RESULT[$key,rclone]:-0}")"
}
ratio() {
    awk -v b="$1" -v us="$2" -v them="$3" 'BEGIN {
        if (us == 0 || them == 0) { print "-"; exit }
        printf "%.2fx\n", (b == "higher") ? us / them : them / us }'
}
for s in "${SYSTEMS[@]}"; do
    RESULT[rss,$s]=$(awk -v s="$s" '$1 == s && $3 > m { m = $3 } END { if (m) printf "%.0f\n", m / 1024 }' "$work/rss")
    for cpu in cpu_read cpu_write; do
        [ -f "$work/cpu" ] || continue
        RESULT[$cpu,$s]=$(awk -v s="$s" -v n="$cpu" '$1 == n && $2 == s { print $3 }' "$work/cpu" | median)
    done
done
log "s3vol's peak RSS by row (MiB):"
awk '$1 == "s3vol" && $3 > m[$2] { m[$2] = $3 } END { for (w in m) printf "  %-16s %.0f\n", w, m[w] / 1024 }' "$work/rss" >&2

echo
echo "s3vol benchmark: Garage on 127.0.0.1, $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, median of $RUNS runs"
[ -z "${S3VOL_OPTIONS:-}" ] || echo "(s3vol mounted with $S3VOL_OPTIONS added)"
[ -z "${S3VOL_BIN:-}" ] || echo "(s3vol is $S3VOL_BIN, $("$S3VOL" --version))"
echo "(s3vol, s3fs and rclone with their defaults and local caches as their users run them;"
echo " --cse: s3vol with client-side encryption, KMS on 127.0.0.1;"
echo " raw: a parallel S3 client (for ls -l, its listing and a HEAD per object),"
echo "  and for the disk-cache rows dd of a local file;"
echo " see docs/BENCHMARK.md for what each row measures)"
echo
printf '| %-38s | %-7s | %8s | %10s | %8s | %8s | %8s | %8s | %8s | %8s |\n' workload unit s3vol "--no-cache" "--cse" s3fs rclone "raw" "vs s3fs" "vs rclone"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..40})" "---------" "----------" "------------" "----------" "----------" "----------" "----------" "----------" "----------"
row "1 GiB sequential read, cold" "MiB/s" higher cold_read "$RAW_GET"
row "4 readers of 256 MiB at once, cold" "MiB/s" higher four_readers "$RAW_GET4"
row "4 KiB random reads, cold" "reads/s" higher random_reads
row "64 KiB files, 8 cats at once, cold" "files/s" higher small_files
row "open + 4 KiB read, cold, 1 by 1" "ms/file" lower first_byte
row "open + first 4 KiB of 32 MiB, cold" "ms" lower first_of_32m
row "1 GiB re-read, page cache (s3vol)" "MiB/s" higher warm_read
row "4 KiB random re-reads, page cache" "reads/s" higher warm_random
row "1 GiB re-read, local disk cache" "MiB/s" higher disk_read "$LOCAL_READ"
row "64 MiB re-read, local disk cache" "MiB/s" higher disk_read_64m "$LOCAL_READ_64M"
row "4 KiB random, local disk cache" "reads/s" higher disk_random
row "ls -l, 10,000 objects" "s" lower ls_l "$RAW_HEADS"
row "find, 10,000 objects in 100 dirs" "s" lower find_tree
row "1 GiB sequential write, durable" "MiB/s" higher seq_write "$RAW_PUT"
row "1000 small-file creates, durable" "files/s" higher small_creates
row "CPU per GiB, cold sequential read" "s/GiB" lower cpu_read
row "CPU per GiB, durable write" "s/GiB" lower cpu_write
row "idle RSS after ls -l of 10,000" "MiB" lower idle_rss
row "idle PSS after ls -l of 10,000" "MiB" lower idle_pss
row "$VOLUMES volumes: time to mount one" "ms" lower many_mount
row "$VOLUMES volumes: RSS per volume at rest" "MiB" lower many_rss
row "$VOLUMES volumes: PSS per volume at rest" "MiB" lower many_pss
row "peak RSS, highest of all rows" "MiB" lower rss
echo
percent_of_raw() {
    [ -n "${RESULT[$1,s3vol]:-}" ] || return 0
    awk -v us="${RESULT[$1,s3vol]}" -v raw="$2" -v what="$3" \
        'BEGIN { printf "s3vol %s is %.0f%% of the raw parallel %s\n", what, 100 * us / raw, (what ~ /read/) ? "GET client" : "multipart PUT" }'
}
[ -z "${RESULT[many_renew,s3vol]:-}" ] ||
    echo "s3vol's $VOLUMES volumes renew their credentials in ${RESULT[many_renew,s3vol]} distinct seconds, each between ${RESULT[many_lead,s3vol]/ / and } s before they expire"
percent_of_raw cold_read "$RAW_GET" "cold sequential read"
percent_of_raw four_readers "$RAW_GET4" "4-reader read"
percent_of_raw seq_write "$RAW_PUT" "durable sequential write"
[ -z "${RESULT[ls_l,s3vol]:-}" ] ||
    awk -v us="${RESULT[ls_l,s3vol]}" -v raw="$RAW_HEADS" \
        'BEGIN { printf "s3vol ls -l takes %.2fx the time of the raw client'"'"'s listing and HEADs\n", us / raw }'
for key in disk_read disk_read_64m; do
    [ -n "${RESULT[$key,s3vol]:-}" ] || continue
    local_mib=$LOCAL_READ; [ "$key" = disk_read ] || local_mib=$LOCAL_READ_64M
    awk -v us="${RESULT[$key,s3vol]}" -v local="$local_mib" -v what="$key" \
        'BEGIN { printf "s3vol %s (passthrough) is %.0f%% of dd of a local file of the same size\n", what, 100 * us / local }'
done
for key in cold_read random_reads seq_write; do
    [ -n "${RESULT[$key,s3vol-cse]:-}" ] && [ -n "${RESULT[$key,s3vol]:-}" ] || continue
    awk -v cse="${RESULT[$key,s3vol-cse]}" -v plain="${RESULT[$key,s3vol]}" -v what="$key" \
        'BEGIN { printf "s3vol --cse %s is %.0f%% of s3vol without encryption\n", what, 100 * cse / plain }'
done
