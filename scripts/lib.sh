# Shared helpers for s3vol's scripts. Source it; do not run it.
#
# Tools that take long to build (Garage, pjdfstest) live in a cache directory outside the
# clone, so a fresh clone on the same machine reuses them.

set -euo pipefail

S3VOL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
S3VOL_TOOLS="${S3VOL_TOOLS:-$HOME/.cache/s3vol-tools}"
GARAGE_VERSION=2.5.0
MOTO_VERSION=5.2.5
PJDFSTEST_VERSION=0.2.2
KUBERNETES_VALIDATE_VERSION=1.37.0
S3EC_VERSION=4.0.0
GRPCIO_VERSION=1.85.3
PROMETHEUS_CLIENT_VERSION=0.26.0
CARGO_DEB_VERSION=3.8.0
GARAGE_BIN="$S3VOL_TOOLS/garage-$GARAGE_VERSION/bin/garage"
PJDFSTEST_BIN="$S3VOL_TOOLS/pjdfstest-$PJDFSTEST_VERSION/bin/pjdfstest"
MOTO_VENV="$S3VOL_TOOLS/moto-$MOTO_VERSION"
MOTO_SERVER="$MOTO_VENV/bin/moto_server"
SYSTEMD_ROOTFS="$S3VOL_TOOLS/debian-bookworm-systemd"
KUBERNETES_VALIDATE_VENV="$S3VOL_TOOLS/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
S3EC_VENV="$S3VOL_TOOLS/s3ec-$S3EC_VERSION"
GRPCIO_VENV="$S3VOL_TOOLS/grpcio-$GRPCIO_VERSION"
PROMETHEUS_CLIENT_VENV="$S3VOL_TOOLS/prometheus-client-$PROMETHEUS_CLIENT_VERSION"
CARGO_DEB_BIN="$S3VOL_TOOLS/cargo-deb-$CARGO_DEB_VERSION/bin/cargo-deb"

# Bold only on a terminal: CI keeps the output as text.
log() {
    if [ -t 2 ]; then printf '\033[1m==> %s\033[0m\n' "$*" >&2; else printf '==> %s\n' "$*" >&2; fi
}
die() { printf 's3vol scripts: %s\n' "$*" >&2; exit 1; }

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "need root to install: ${missing[*]}"
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_rust() {
    command -v cargo >/dev/null || die "cargo is not installed; install a Rust toolchain (rustup, Rust 1.94.1 or newer) and run this again"
}

# cargo-nextest runs the tests (.config/nextest.toml): each in a process of its
# own, with a time limit.
ensure_nextest() {
    command -v cargo-nextest >/dev/null && return
    log "installing cargo-nextest (once; a few minutes)"
    cargo install --locked --quiet cargo-nextest --version 0.9.143
}

ensure_fuse() {
    apt_install fuse3 pkg-config
    [ -e /dev/fuse ] || die "/dev/fuse is missing: load the fuse module (modprobe fuse) or, in a container, run with --device /dev/fuse --cap-add SYS_ADMIN"
}

# The tools the write tests run in a volume, as users do, and systemd-analyze.
ensure_test_tools() {
    local missing=()
    # make, s3fs and rclone for the tests of what other tools make of the volume;
    # curl for the tests of presigned URLs; dbench for a file server's load.
    for tool in rsync git tar make s3fs rclone curl dbench; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    # The deploy guide's systemd units are checked with systemd-analyze.
    command -v systemd-analyze >/dev/null || missing+=(systemd)
    # setfattr and getfattr for extended attributes; file for content types.
    command -v setfattr >/dev/null || missing+=(attr)
    command -v file >/dev/null || missing+=(file)
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

ensure_moto() {
    [ -x "$MOTO_SERVER" ] && return 0
    apt_install python3-venv
    log "installing moto $MOTO_VERSION into $MOTO_VENV"
    python3 -m venv "$MOTO_VENV"
    "$MOTO_VENV/bin/pip" install -q "moto[server]==$MOTO_VERSION"
}

# Validates deploy/kubernetes/ against the Kubernetes API schemas it ships (no
# cluster needed).
ensure_kubernetes_validate() {
    [ -x "$KUBERNETES_VALIDATE_VENV/bin/kubernetes-validate" ] && return 0
    apt_install python3-venv
    log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $KUBERNETES_VALIDATE_VENV"
    python3 -m venv "$KUBERNETES_VALIDATE_VENV"
    "$KUBERNETES_VALIDATE_VENV/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
}

# AWS's S3 Encryption Client for Python, which client-side encrypted objects
# must agree with (scripts/s3ec.py).
ensure_s3_encryption_client() {
    [ -x "$S3EC_VENV/bin/python" ] && "$S3EC_VENV/bin/python" -c "import s3_encryption" 2>/dev/null && return 0
    apt_install python3-venv
    log "installing amazon-s3-encryption-client-python $S3EC_VERSION into $S3EC_VENV"
    python3 -m venv "$S3EC_VENV"
    "$S3EC_VENV/bin/pip" install -q "amazon-s3-encryption-client-python==$S3EC_VERSION"
}

# Python's gRPC (built on grpc-core), a client of the CSI socket other than
# kubelet's, which names the socket's path as the calls' authority.
ensure_grpcio() {
    [ -x "$GRPCIO_VENV/bin/python" ] && "$GRPCIO_VENV/bin/python" -c "import grpc" 2>/dev/null && return 0
    apt_install python3-venv
    log "installing grpcio $GRPCIO_VERSION into $GRPCIO_VENV"
    python3 -m venv "$GRPCIO_VENV"
    "$GRPCIO_VENV/bin/pip" install -q "grpcio==$GRPCIO_VERSION"
}

# Prometheus's own Python client, whose parser reads what the metrics
# endpoints serve as Prometheus would.
ensure_prometheus_client() {
    [ -x "$PROMETHEUS_CLIENT_VENV/bin/python" ] &&
        "$PROMETHEUS_CLIENT_VENV/bin/python" -c "import prometheus_client" 2>/dev/null && return 0
    apt_install python3-venv
    log "installing prometheus_client $PROMETHEUS_CLIENT_VERSION into $PROMETHEUS_CLIENT_VENV"
    python3 -m venv "$PROMETHEUS_CLIENT_VENV"
    "$PROMETHEUS_CLIENT_VENV/bin/pip" install -q "prometheus-client==$PROMETHEUS_CLIENT_VERSION"
}

# cargo-deb, which builds the Debian package (scripts/package.sh), and what it
# and the package's check need: dpkg-shlibdeps for the library dependencies,
# lintian for Debian's rules.
ensure_packaging() {
    apt_install dpkg-dev lintian
    [ -x "$CARGO_DEB_BIN" ] && return 0
    ensure_rust
    log "building cargo-deb $CARGO_DEB_VERSION (a few minutes the first time; cached in $S3VOL_TOOLS)"
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --root "$S3VOL_TOOLS/cargo-deb-$CARGO_DEB_VERSION" --quiet
}

ensure_pjdfstest() {
    [ -x "$PJDFSTEST_BIN" ] && return 0
    ensure_rust
    apt_install libacl1-dev acl
    log "building pjdfstest $PJDFSTEST_VERSION (a few minutes the first time; cached in $S3VOL_TOOLS)"
    cargo install pjdfstest --version "$PJDFSTEST_VERSION" --locked --root "$S3VOL_TOOLS/pjdfstest-$PJDFSTEST_VERSION" --quiet
}

ensure_garage() {
    [ -x "$GARAGE_BIN" ] && return 0
    ensure_rust
    log "building Garage $GARAGE_VERSION (about 11 minutes the first time; cached in $S3VOL_TOOLS)"
    cargo install garage --version "$GARAGE_VERSION" --locked --root "$S3VOL_TOOLS/garage-$GARAGE_VERSION" --quiet
}

# A minimal Debian with systemd, booted with systemd-nspawn by the test of the
# deploy guide's mount unit (the test machine's own init may not be systemd).
# Built once with debootstrap (under a minute) and booted read-only-with-overlay,
# so it never changes.
ensure_systemd_rootfs() {
    # What a Debian host that mounts s3vol volumes has: systemd, FUSE, mount(8)
    # and the CA certificates the AWS SDK loads at start.
    local packages=systemd,systemd-sysv,dbus,fuse3,util-linux,mount,ca-certificates
    apt_install systemd-container debootstrap
    [ "$(cat "$SYSTEMD_ROOTFS/.complete" 2>/dev/null)" = "$packages" ] && return 0
    local mirror
    mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
    mirror=${DEBIAN_MIRROR:-${mirror:-http://deb.debian.org/debian}}
    log "building a Debian rootfs with systemd for the systemd test (cached in $S3VOL_TOOLS)"
    rm -rf "$SYSTEMD_ROOTFS.partial"
    debootstrap --variant=minbase --include="$packages" \
        bookworm "$SYSTEMD_ROOTFS.partial" "$mirror" >"$S3VOL_TOOLS/debootstrap.log" 2>&1 \
        || die "debootstrap failed; see $S3VOL_TOOLS/debootstrap.log"
    rm -rf "$SYSTEMD_ROOTFS"
    mv "$SYSTEMD_ROOTFS.partial" "$SYSTEMD_ROOTFS"
    echo "$packages" >"$SYSTEMD_ROOTFS/.complete"
}

# A TCP port nothing listens on right now. It is chosen at random below the
# kernel's ephemeral range: a port from bind(0) is free only until some outgoing
# connection takes it, which under the tests' traffic happened before the server
# could bind it; and servers started at the same moment rarely pick the same one.
free_port() {
    python3 -c '
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(1000):
    port = random.randrange(10000, max(low, 10001))
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
    print(port)
    break
else:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])
'
}

# Whether process PID itself listens on 127.0.0.1:PORT (not merely someone else:
# two servers started at once may have picked the same port, and the one that lost
# the race must not take the other's answers for its own).
listens_on() {
    local pid=$1 port=$2 inode
    for inode in $(awk -v port="$(printf ':%04X' "$port")" \
        '$4 == "0A" && substr($2, length($2) - 4) == port { print $10 }' /proc/net/tcp); do
        [ -n "$(find "/proc/$pid/fd" -lname "socket:\[$inode\]" -print -quit 2>/dev/null)" ] && return 0
    done
    return 1
}

# Waits until process PID listens on every PORT. Fails (status 1) if it has not
# within 10 s, or exits first, as a server does when one of its ports was taken
# (one that goes on without the port is stopped here); the caller starts another
# on other ports.
wait_for_ports() {
    local pid=$1 what=$2 port ready deadline=$((SECONDS + 10))
    shift 2
    while [ "$SECONDS" -lt "$deadline" ]; do
        kill -0 "$pid" 2>/dev/null || return 1
        ready=1
        for port in "$@"; do
            listens_on "$pid" "$port" || { ready=0; break; }
        done
        [ "$ready" = 1 ] && return 0
        sleep 0.05
    done
    echo "s3vol scripts: $what did not listen on 127.0.0.1 port(s) $* within 10 s; trying others" >&2
    kill "$pid" 2>/dev/null
    return 1
}

# Makes a temporary directory $work holding an empty mountpoint $mnt, starts Garage
# there with BUCKET and exports its S3_ENDPOINT and keys; on exit, unmounts $mnt and
# stops Garage (its data is removed, the logs are kept).
garage_workspace() {
    local name=$1 bucket=$2
    work=$(mktemp -d "/tmp/s3vol-$name.XXXXXX")
    mnt="$work/mnt"
    mkdir -p "$mnt"
    trap garage_workspace_cleanup EXIT
    log "starting Garage on 127.0.0.1 with bucket '$bucket'"
    eval "$("$S3VOL_ROOT/scripts/garage.sh" start "$work/garage" "$bucket" | sed 's/^/export /')"
}

garage_workspace_cleanup() {
    if mountpoint -q "$mnt"; then umount "$mnt"; fi
    "$S3VOL_ROOT/scripts/garage.sh" stop "$work/garage"
    rm -rf "$work/garage/data"
}
