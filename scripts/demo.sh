#!/usr/bin/env bash
# Installs what s3vol needs, builds and installs it (scripts/install.sh: s3vol and
# its mount(8) helper), starts a local Garage S3 server with sample data, mounts the
# bucket prefix read-only with `mount -t s3vol` and shows it working, then mounts it
# read-write with `s3vol mount` and writes through it. Leaves nothing running: the
# mounts and the server are stopped at the end.
source "$(dirname "$0")/lib.sh"
cd "$S3VOL_ROOT"

ensure_rust
ensure_fuse
ensure_moto      # its Python environment carries boto3, used to upload the sample data
ensure_garage

bash "$S3VOL_ROOT/scripts/install.sh"
S3VOL=/usr/local/bin/s3vol

garage_workspace demo demo

log "uploading sample data under demo/datasets/"
"$MOTO_VENV/bin/python" - <<'PY'
import os, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT"])
put = lambda key, body: s3.put_object(Bucket="demo", Key=key, Body=body)
put("datasets/README.txt", b"Sample volume served by s3vol from a local Garage server.\n")
put("datasets/climate/2024/january.csv", b"day,temp\n" + b"".join(b"%d,%d\n" % (d, d % 7) for d in range(1, 32)))
put("datasets/climate/2024/february.csv", b"day,temp\n1,3\n2,4\n")
put("datasets/images/", b"")  # a directory marker, as the S3 console makes them
put("datasets/images/random.bin", os.urandom(64 * 1024 * 1024))
put("private/not-in-the-volume.txt", b"outside the prefix")
PY

# mount(8) runs /sbin/mount.s3vol, which takes every s3vol option as -o name=value;
# the credentials come from the environment, as for any AWS tool.
metrics_port=$(free_port)
options="endpoint_url=$S3_ENDPOINT,force_path_style,cache_dir=$work/cache,log_file=$work/s3vol.log,metrics_listen=$metrics_port"
log "mount -t s3vol demo/datasets $mnt -o $options"
mount -t s3vol demo/datasets "$mnt" -o "$options"
findmnt "$mnt"

log "ls -lR $mnt"
ls -lR "$mnt"
log "cat README.txt"
cat "$mnt/README.txt"
log "head -3 climate/2024/january.csv"
head -3 "$mnt/climate/2024/january.csv"

log "reading images/random.bin (64 MiB) and comparing with S3"
# Timed alone: hashing 64 MiB takes longer than reading it.
time_start=$(date +%s.%N)
cat "$mnt/images/random.bin" >/dev/null
time_end=$(date +%s.%N)
local_sum=$(sha256sum "$mnt/images/random.bin" | cut -d' ' -f1)
s3_sum=$("$MOTO_VENV/bin/python" -c '
import os, hashlib, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT"])
print(hashlib.sha256(s3.get_object(Bucket="demo", Key="datasets/images/random.bin")["Body"].read()).hexdigest())')
echo "through s3vol: $local_sum"
echo "straight S3:   $s3_sum"
[ "$local_sum" = "$s3_sum" ] || die "checksums differ"
awk -v a="$time_start" -v b="$time_end" 'BEGIN { printf "read 64 MiB in %.2f s (%.0f MiB/s)\n", b - a, 64 / (b - a) }'

log "reading it again: served by the block cache, no GET sent"
sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
gets() { "$S3VOL" stats --json "$mnt" | "$MOTO_VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["requests"]["GetObject"])'; }
before=$(gets)
time_start=$(date +%s.%N)
cat "$mnt/images/random.bin" >/dev/null
time_end=$(date +%s.%N)
again_sum=$(sha256sum "$mnt/images/random.bin" | cut -d' ' -f1)
[ "$again_sum" = "$s3_sum" ] || die "checksums differ on the re-read"
[ "$(gets)" = "$before" ] || die "the re-read sent GET requests"
awk -v a="$time_start" -v b="$time_end" 'BEGIN { printf "re-read 64 MiB in %.2f s (%.0f MiB/s)\n", b - a, 64 / (b - a) }'
log "s3vol stats $mnt"
"$S3VOL" stats "$mnt"

# The same numbers for Prometheus, on 127.0.0.1 (metrics_listen=PORT).
log "GET http://127.0.0.1:$metrics_port/metrics (the GetObject requests and the cache hits)"
exec 3<>"/dev/tcp/127.0.0.1/$metrics_port"
printf 'GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
grep -E '^s3vol_(requests_total\{operation="GetObject"|cache_hits_total)' <&3 ||
    die "the metrics endpoint did not answer"
exec 3<&-

log "writes are refused on a read-only volume"
if touch "$mnt/new-file" 2>"$work/err"; then die "a write succeeded on a read-only mount"; fi
cat "$work/err"

log "umount $mnt"
umount "$mnt"

log "s3vol mount demo/datasets $mnt --read-write"
"$S3VOL" mount demo/datasets "$mnt" --endpoint-url "$S3_ENDPOINT" --force-path-style \
    --read-write --cache-dir "$work/cache" --log-file "$work/s3vol.log"
log "copying a 20 MiB file in (a multipart upload; durable when cp returns), then renaming it"
mkdir "$mnt/results"
head -c 20M /dev/urandom >"$work/output.bin"
cp "$work/output.bin" "$mnt/results/run-1.bin"
mv "$mnt/results/run-1.bin" "$mnt/results/final.bin"
ls -l "$mnt/results"
s3_sum=$("$MOTO_VENV/bin/python" -c '
import os, hashlib, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT"])
print(hashlib.sha256(s3.get_object(Bucket="demo", Key="datasets/results/final.bin")["Body"].read()).hexdigest())')
local_sum=$(sha256sum "$work/output.bin" | cut -d' ' -f1)
echo "written:  $local_sum"
echo "in S3:    $s3_sum"
[ "$local_sum" = "$s3_sum" ] || die "checksums differ"
log "umount $mnt"
umount "$mnt"
log "demo finished"
