#!/usr/bin/env bash
# An emulated 64-bit Raspberry Pi reached over ssh: an arm64 Debian root file system run by
# qemu-user (binfmt_misc) in a chroot, with the CPU of a real board, and its own sshd.
#
#   tests/arm/board.sh build                  the arm64 root file system, once (cached)
#   tests/arm/board.sh start BOARD DIR PORT   BOARD pi5 (Cortex-A76) or pi4 (Cortex-A72): a
#                                             copy of it in DIR, sshd on 127.0.0.1:PORT for
#                                             root with DIR/key (written here)
#   tests/arm/board.sh stop DIR               ends every process in it, unmounts, deletes DIR
#
# Needs root (mounts, chroot, binfmt_misc) and Debian's qemu-user-static, binfmt-support and
# mmdebstrap, which `build` installs. Facts it is built on (issue 31):
# - QEMU_CPU must name a real core: qemu's default `max` CPU exposes SME, and LiteRT's int8
#   kernels then give wrong answers. The cpuinfo bound over the chroot's must describe the
#   same core (an A76 cpuinfo under cortex-a72 dies with SIGILL); qemu 7.2 shows the host's
#   x86 cpuinfo otherwise, which makes onnxruntime and LiteRT crash at import.
# - Without /sys, XNNPACK is silently off.
# - pip there checks certificates against the host's extra CA certificates, which can change
#   per boot: copied in at every start, never baked into the cached image.
set -euo pipefail

CACHE=${EDGEPILOT_ARM_CACHE:-/var/cache/edgepilot/arm}
ROOTFS=$CACHE/rootfs-bookworm-arm64
HERE=$(cd "$(dirname "$0")" && pwd)

die() { echo "board.sh: $*" >&2; exit 1; }

ensure_binfmt() {
    [ "$(id -u)" = 0 ] || die "needs root (mounts, chroot, binfmt_misc)"
    if ! command -v qemu-aarch64-static >/dev/null || ! command -v mmdebstrap >/dev/null \
            || ! command -v update-binfmts >/dev/null; then
        apt-get update -qq && apt-get install -y -qq qemu-user-static binfmt-support \
            mmdebstrap >/dev/null
    fi
    [ -e /proc/sys/fs/binfmt_misc/status ] || \
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
    grep -q '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 || \
        die "qemu-aarch64 is registered without the F flag: aarch64 programs cannot run in a chroot"
}

build() {
    ensure_binfmt
    [ -f "$ROOTFS/.complete" ] && return 0
    mkdir -p "$CACHE"
    rm -rf "$ROOTFS.tmp"
    # The host's own Debian mirror (the only one reachable), arm64 packages.
    local mirror
    mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
    mirror=${mirror:-http://deb.debian.org/debian}
    mmdebstrap --quiet --arch=arm64 --variant=apt \
        --include=python3,python3-venv,openssh-server,rsync,ca-certificates \
        bookworm "$ROOTFS.tmp" "deb $mirror bookworm main"
    touch "$ROOTFS.tmp/.complete"
    mv "$ROOTFS.tmp" "$ROOTFS"
}

start() {
    local board=$1 dir=$2 port=$3 cpu cpuinfo
    case $board in
        pi5) cpu=cortex-a76 ;;
        pi4) cpu=cortex-a72 ;;
        *) die "unknown board '$board' (pi5 or pi4)" ;;
    esac
    cpuinfo=$HERE/cpuinfo-$board
    build
    [ ! -e "$dir" ] || die "'$dir' exists: give a new folder"
    mkdir -p "$dir"
    local root=$dir/root
    cp -a "$ROOTFS" "$root"
    # This run's CA certificates, so pip there trusts what the host trusts.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
        cat /usr/local/share/ca-certificates/*.crt >> "$root/etc/ssl/certs/ca-certificates.crt"
    fi
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    [ ! -f /etc/pip.conf ] || grep -v 'file://\|find-links' /etc/pip.conf > "$root/etc/pip.conf"
    mount -t proc proc "$root/proc"
    mount --bind "$cpuinfo" "$root/proc/cpuinfo"
    mount -t sysfs sysfs "$root/sys"
    mount --rbind /dev "$root/dev"
    mount --make-rslave "$root/dev"
    # One pip cache for every board and run: wheels are downloaded once, not per board.
    mkdir -p "$CACHE/pip" "$root/root/.cache/pip"
    mount --bind "$CACHE/pip" "$root/root/.cache/pip"
    ssh-keygen -q -t ed25519 -N "" -f "$dir/key"
    mkdir -p "$root/root/.ssh" "$root/run/sshd"
    cp "$dir/key.pub" "$root/root/.ssh/authorized_keys"
    chroot "$root" ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/edgepilot_host_key
    cat > "$root/etc/ssh/sshd_edgepilot" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey /etc/ssh/edgepilot_host_key
PidFile /run/sshd-edgepilot.pid
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
StrictModes no
LogLevel ERROR
SetEnv QEMU_CPU=$cpu
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
    echo "$cpu" > "$dir/cpu"
    # env -i: nothing of the host's environment leaks in; QEMU_CPU picks the emulated core
    # for sshd itself, and SetEnv for every session it starts.
    env -i QEMU_CPU="$cpu" PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        chroot "$root" /usr/sbin/sshd -D -e -f /etc/ssh/sshd_edgepilot \
        >"$dir/sshd.log" 2>&1 &
    echo $! > "$dir/sshd.pid"
}

stop() {
    local dir=$1
    [ -d "$dir/root" ] || { rm -rf "$dir"; return 0; }
    local root
    root=$(cd "$dir/root" && pwd -P)
    # Every process whose root is the board's: sshd, sessions, anything a test left behind.
    local pids
    for _ in 1 2 3; do
        pids=$(for p in /proc/[0-9]*; do
            [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] && echo "${p#/proc/}"; done || true)
        [ -n "$pids" ] || break
        kill -9 $pids 2>/dev/null || true
        sleep 0.5
    done
    for mount in "$root/root/.cache/pip" "$root/proc/cpuinfo" "$root/proc" "$root/sys" \
            "$root/dev"; do
        mountpoint -q "$mount" && umount -R -l "$mount" || true
    done
    # Nothing may still be mounted below the copy before it is deleted.
    if grep -q " $root/" /proc/mounts; then
        die "'$root' still has mounts; not deleting it"
    fi
    rm -rf "$dir"
}

case ${1:-} in
    build) build ;;
    start) [ $# -eq 4 ] || die "usage: start BOARD DIR PORT"; start "$2" "$3" "$4" ;;
    stop) [ $# -eq 2 ] || die "usage: stop DIR"; stop "$2" ;;
    *) die "usage: build | start BOARD DIR PORT | stop DIR" ;;
esac
