#!/usr/bin/env bash
# Build (or reuse) the systemd + cgroup v2 test host: a Debian 12 minbase root filesystem with
# bookworm's 6.1 kernel and the 6.12 kernel from bookworm-backports, packed into an ext4 image with
# `mkfs.ext4 -d` (no loop devices, no mounts of the image), plus QEMU from bookworm-backports
# unpacked next to it (6.12 does not boot under the host's QEMU 7.2 TCG; see README.md).
#
# Flavours (RTVIRT_V2HOST_FLAVOUR, or the first argument): "base" (default, what the v2host tests boot) and
# "prod", the production-shaped host: the base recipe plus Debian's PREEMPT_RT kernel (linux-image-rt-amd64)
# and libvirt as Debian packages it (libvirt-daemon-system, bookworm's qemu-system-x86, systemd-container for
# machined, python3-libvirt); no 6.12 kernel and no backports QEMU (the RT kernel boots on the host's QEMU).
#
# Output (stdout, one line): the cache directory, /var/cache/rtvirt-v2host/<key>/, where <key> is a
# hash of this script and the mirror (and, for "prod", the flavour). Everything else goes to stderr. A complete cache directory is
# reused as is; a changed script builds a new one. Concurrent callers are serialised with flock.
#
# Needs root, debootstrap (installed with apt-get if missing), e2fsprogs >= 1.43, qemu-utils.
# Environment: RTVIRT_V2HOST_CACHE (default /var/cache/rtvirt-v2host),
#              RTVIRT_V2HOST_MIRROR (default: the first Debian URI in /etc/apt/sources.list*).
set -euo pipefail

exec 3>&1 1>&2

FLAVOUR=${1:-${RTVIRT_V2HOST_FLAVOUR:-base}}
case $FLAVOUR in base|prod) ;; *) echo "flavour must be base or prod, not $FLAVOUR" >&2; exit 2 ;; esac
SUITE=bookworm
BACKPORTS=bookworm-backports
# procps: pgrep, which host_prep's daemon helper uses; grub2-common: update-grub for the kernel_cmdline tests
# (QEMU boots the kernel with -kernel, so GRUB only regenerates /boot/grub/grub.cfg; it is never installed to a disk).
PACKAGES=systemd,systemd-sysv,dbus,libpam-systemd,openssh-server,python3,iproute2,udev,procps,grub2-common
# QEMU >= 8 from backports, for the 6.12 kernel under TCG; unpacked only, never installed.
QEMU_DEBS=(qemu-system-x86 qemu-system-common qemu-system-data seabios)
# prod: what a realtime KVM host runs. qemu-system-x86 is bookworm's (7.2), the guests' own QEMU, TCG only in
# the test host (no nested KVM); systemd-container makes libvirt register guests with machined, as in production.
PROD_PACKAGES=(linux-image-rt-amd64 libvirt-daemon-system libvirt-clients qemu-system-x86 systemd-container
               python3-libvirt)

CACHE_ROOT=${RTVIRT_V2HOST_CACHE:-/var/cache/rtvirt-v2host}
SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")

log() { printf '[v2host build %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { log "ERROR: $*"; exit 1; }

detect_mirror() {
    # deb822 "URIs:" lines and one-line "deb [opts] URI suite ..." lines; skip the security archive.
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk '
            /^[[:space:]]*#/ { next }
            /^URIs:/ { for (i = 2; i <= NF; i++) print $i; next }
            /^deb[[:space:]]/ { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/ && $i !~ /=/) { print $i; break } }
        ' "$f"
    done | grep -E '/debian/?$' | grep -v security | head -n 1
}

MIRROR=${RTVIRT_V2HOST_MIRROR:-$(detect_mirror)}
[ -n "$MIRROR" ] || die "no Debian mirror found in /etc/apt/sources.list*; set RTVIRT_V2HOST_MIRROR"
MIRROR=${MIRROR%/}

KEY=$( { cat "$SCRIPT"; echo "mirror=$MIRROR"; [ "$FLAVOUR" = base ] || echo "flavour=$FLAVOUR"; } \
      | sha256sum | cut -c1-16)
OUT=$CACHE_ROOT/$KEY

if [ -f "$OUT/complete" ]; then
    touch "$OUT/last-used" 2>/dev/null || true
    echo "$OUT" >&3
    exit 0
fi

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot)"
mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.lock"
flock 9
if [ -f "$OUT/complete" ]; then     # built by a concurrent caller while we waited
    echo "$OUT" >&3
    exit 0
fi

T0=$(date +%s)
for tool in mkfs.ext4 qemu-img ssh-keygen unshare chroot; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap
fi

WORK=$CACHE_ROOT/.build-$KEY-$$
cleanup() {
    local rc=$?
    # Mounts made below live in a private mount namespace and are gone already; this is only files.
    rm -rf --one-file-system "$WORK"
    [ $rc = 0 ] || log "build failed (rc=$rc)"
}
trap cleanup EXIT
rm -rf --one-file-system "$WORK"
mkdir -p "$WORK"
ROOT=$WORK/rootfs
STAGE=$WORK/out
mkdir -p "$STAGE"

# --- backports QEMU, through a private apt state (the host's apt configuration is not touched) ---
fetch_backports_qemu() {
log "fetching QEMU from $BACKPORTS ($MIRROR)"
APTD=$WORK/apt
mkdir -p "$APTD/lists/partial" "$APTD/archives/partial" "$APTD/debs"
echo "deb $MIRROR $BACKPORTS main" >"$APTD/sources.list"
APT_OPTS=(-o "Dir::Etc::SourceList=$APTD/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$APTD/lists" -o "Dir::Cache=$APTD" -o "Dir::Cache::archives=$APTD/archives"
          -o "APT::Default-Release=$BACKPORTS" -o APT::Sandbox::User=root -o Debug::NoLocking=1)
apt-get "${APT_OPTS[@]}" -q update
(cd "$APTD/debs" && apt-get "${APT_OPTS[@]}" -q download "${QEMU_DEBS[@]}")
mkdir -p "$STAGE/qemu"
for deb in "$APTD"/debs/*.deb; do
    dpkg -x "$deb" "$STAGE/qemu"
done
QEMU_BPO=$STAGE/qemu/usr/bin/qemu-system-x86_64
if LD_LIBRARY_PATH='' ldd "$QEMU_BPO" | grep -q 'not found'; then
    ldd "$QEMU_BPO" | grep 'not found'
    die "backports QEMU needs libraries the host lacks"
fi
"$QEMU_BPO" --version | head -n 1 >"$STAGE/qemu/VERSION"
}
[ "$FLAVOUR" != base ] || fetch_backports_qemu

# --- root filesystem ---
log "debootstrap --variant=minbase $SUITE"
mkdir -p "$CACHE_ROOT/debs"
# In a private mount namespace: the proc/sys mounts debootstrap makes can never outlive it.
unshare --mount --propagation private --fork -- \
    debootstrap --variant=minbase --include="$PACKAGES" --cache-dir="$CACHE_ROOT/debs" \
    "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 40 "$WORK/debootstrap.log"; die "debootstrap failed"; }

cat >"$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $MIRROR $BACKPORTS main
EOF
# No daemons start inside the chroot; no docs, man pages or translations in the image.
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 755 "$ROOT/usr/sbin/policy-rc.d"
cat >"$ROOT/etc/dpkg/dpkg.cfg.d/01-rtvirt-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
# A small initramfs: just what finds an ext4 root on virtio-blk (much faster to build and boot).
mkdir -p "$ROOT/etc/initramfs-tools/conf.d"
echo MODULES=list >"$ROOT/etc/initramfs-tools/conf.d/rtvirt"
cat >"$ROOT/etc/initramfs-tools/modules" <<'EOF'
virtio_pci
virtio_blk
ext4
EOF

log "installing kernels (6.1 from $SUITE$([ "$FLAVOUR" = base ] && echo ", 6.12 from $BACKPORTS"))"
# apt and the kernel hooks want /proc; mount it in a private mount namespace that dies with the command.
in_chroot() {
    # shellcheck disable=SC2016  # expanded by the inner sh, on purpose
    unshare --mount --propagation private --fork -- sh -c '
        mount -t proc proc "$1/proc" && mount -t sysfs sysfs "$1/sys" && shift && exec chroot "$@"
    ' sh "$ROOT" "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 "$@"
}
in_chroot apt-get -q update >"$WORK/apt.log" 2>&1 || { tail -n 40 "$WORK/apt.log"; die "apt-get update in chroot failed"; }
in_chroot apt-get -q install -y --no-install-recommends linux-image-amd64 >>"$WORK/apt.log" 2>&1 \
    || { tail -n 40 "$WORK/apt.log"; die "installing the $SUITE kernel failed"; }
if [ "$FLAVOUR" = base ]; then
    in_chroot apt-get -q install -y --no-install-recommends -t "$BACKPORTS" linux-image-amd64 >>"$WORK/apt.log" 2>&1 \
        || { tail -n 40 "$WORK/apt.log"; die "installing the $BACKPORTS kernel failed"; }
    SERIES="6.1 6.12"
else
    log "installing ${PROD_PACKAGES[*]}"
    in_chroot apt-get -q install -y --no-install-recommends "${PROD_PACKAGES[@]}" >>"$WORK/apt.log" 2>&1 \
        || { tail -n 40 "$WORK/apt.log"; die "installing the prod packages failed"; }
    SERIES="6.1 6.1-rt"
fi
in_chroot apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT/usr/sbin/policy-rc.d"

# --- guest configuration ---
log "configuring the guest"
echo v2host >"$ROOT/etc/hostname"
cat >"$ROOT/etc/hosts" <<'EOF'
127.0.0.1 localhost
127.0.1.1 v2host
::1 localhost ip6-localhost ip6-loopback
EOF
echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' >"$ROOT/etc/fstab"
# QEMU user-net's fixed addresses, set statically: no DHCP round trip on the (emulated) boot path.
cat >"$ROOT/etc/systemd/network/10-rtvirt.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
Address=10.0.2.15/24
Gateway=10.0.2.2
DNS=10.0.2.3
LinkLocalAddressing=no
IPv6AcceptRA=no
EOF
# QEMU user-net's DNS; nothing in the guest needs the network beyond SSH from the host.
echo 'nameserver 10.0.2.3' >"$ROOT/etc/resolv.conf"
in_chroot systemctl enable systemd-networkd.service ssh.service
# Timers and jobs that would only compete for the (emulated, slow) CPUs during tests.
in_chroot systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
    fstrim.timer systemd-networkd-wait-online.service
if [ "$FLAVOUR" = prod ]; then
    # libvirt's NAT network needs dnsmasq (not installed); the test guests have no NIC, so it is not started.
    rm -f "$ROOT/etc/libvirt/qemu/networks/autostart/default.xml"
fi
# A fresh machine id on every boot (the overlay is thrown away anyway).
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"

# The cgroup v1 shape (boot.py init="v1": kernel command line init=/usr/local/sbin/rtvirt-init-v1): no systemd
# as PID 1 and the CI machines' hybrid layout, one v1 hierarchy per controller under /sys/fs/cgroup, a
# name=systemd hierarchy, cgroup2 at /sys/fs/cgroup/unified. Python, so that PID 1 reaps orphans reliably.
install -m 755 /dev/stdin "$ROOT/usr/local/sbin/rtvirt-init-v1" <<'INIT'
#!/usr/bin/python3
"""PID 1 of the test host in its cgroup v1 shape (tests/support/v2host/README.md).

Mounts what initramfs-tools has not moved into the root already, the cgroup v1 hierarchies as the CI
machines have them (cpu, cpuacct, cpuset, memory, devices, freezer, blkio, pids, name=systemd; cgroup2 at
/sys/fs/cgroup/unified), loads virtio_net and gives the NIC QEMU user-net's static address, starts sshd and
reaps orphans. SIGTERM (boot.py's shutdown: `kill -TERM 1`) syncs and powers off.
"""
import ctypes
import os
import signal
import subprocess
import sys
import time

V1 = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids")


def log(text):
    sys.stderr.write("rtvirt-init-v1: %s\n" % text)
    sys.stderr.flush()


def run(*argv):
    proc = subprocess.run(argv, check=False)
    if proc.returncode:
        log("failed (rc=%d): %s" % (proc.returncode, " ".join(argv)))
    return proc.returncode == 0


def mounted(target):
    try:
        with open("/proc/self/mounts") as handle:
            return any(line.split()[1] == target for line in handle)
    except OSError:
        return False


def mount(fstype, source, target, options=""):
    if mounted(target):
        return
    os.makedirs(target, exist_ok=True)
    run("mount", "-t", fstype, *(["-o", options] if options else []), source, target)


def power_off(_signum, _frame):
    log("powering off")
    os.sync()
    ctypes.CDLL(None, use_errno=True).reboot(0x4321FEDC)   # LINUX_REBOOT_CMD_POWER_OFF


def main():
    signal.signal(signal.SIGTERM, power_off)
    mount("proc", "proc", "/proc")
    mount("sysfs", "sysfs", "/sys")
    mount("devtmpfs", "devtmpfs", "/dev", "mode=0755")
    mount("devpts", "devpts", "/dev/pts", "gid=5,mode=620,ptmxmode=000")
    mount("tmpfs", "tmpfs", "/dev/shm", "mode=1777")
    mount("tmpfs", "tmpfs", "/run", "mode=0755")
    run("mount", "-o", "remount,rw", "/")
    mount("tmpfs", "cgroup_root", "/sys/fs/cgroup", "mode=0755")
    for controller in V1:
        mount("cgroup", "cgroup", "/sys/fs/cgroup/" + controller, controller)
    mount("cgroup", "cgroup", "/sys/fs/cgroup/systemd", "none,name=systemd")
    mount("cgroup2", "cgroup2", "/sys/fs/cgroup/unified")
    for directory in ("/run/lock", "/run/sshd", "/tmp"):
        os.makedirs(directory, exist_ok=True)
    os.chmod("/tmp", 0o1777)
    with open("/etc/hostname") as handle:
        run("hostname", handle.read().strip())
    run("modprobe", "virtio_net")
    run("ip", "link", "set", "lo", "up")
    nic = None
    for _ in range(100):           # the driver binds asynchronously; give up after about 10 s
        nics = sorted(n for n in os.listdir("/sys/class/net") if n != "lo")
        if nics:
            nic = nics[0]
            break
        time.sleep(0.1)
    if nic:
        run("ip", "link", "set", nic, "up")
        run("ip", "address", "add", "10.0.2.15/24", "dev", nic)
        run("ip", "route", "add", "default", "via", "10.0.2.2")
    else:
        log("no network interface")
    run("/usr/sbin/sshd", "-E", "/var/log/sshd.log")
    log("up: no systemd, cgroup v1 per controller, cgroup2 at /sys/fs/cgroup/unified, sshd on %s" % nic)
    while True:
        try:
            os.wait()
        except ChildProcessError:
            signal.pause()


if __name__ == "__main__":
    main()
INIT
# update-grub writes here; no boot loader is installed on the image (QEMU boots with -kernel).
mkdir -p "$ROOT/boot/grub"

# SSH: root by key only, host keys generated here, key pair in the cache dir.
rm -f "$ROOT"/etc/ssh/ssh_host_*
in_chroot ssh-keygen -A
cat >"$ROOT/etc/ssh/sshd_config.d/rtvirt.conf" <<'EOF'
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
EOF
ssh-keygen -q -t ed25519 -N '' -C rtvirt-v2host -f "$STAGE/id_ed25519"
install -d -m 700 "$ROOT/root/.ssh"
install -m 600 "$STAGE/id_ed25519.pub" "$ROOT/root/.ssh/authorized_keys"

# --- kernels out of /boot ---
for series in $SERIES; do
    # "6.1" is the stock kernel, "6.1-rt" the PREEMPT_RT one (vmlinuz-6.1.0-N-rt-amd64).
    case $series in
        *-rt) vmlinuz=$(find "$ROOT/boot" -maxdepth 1 -name "vmlinuz-${series%-rt}.*-rt-amd64" | sort -V | tail -n 1) ;;
        *) vmlinuz=$(find "$ROOT/boot" -maxdepth 1 -name "vmlinuz-$series.*-amd64" ! -name '*-rt-amd64' | sort -V | tail -n 1) ;;
    esac
    [ -n "$vmlinuz" ] || die "no $series kernel in $ROOT/boot: $(ls "$ROOT/boot")"
    release=${vmlinuz##*/vmlinuz-}
    [ -f "$ROOT/boot/initrd.img-$release" ] || die "no initrd for $release"
    mkdir -p "$STAGE/kernel-$series"
    cp "$vmlinuz" "$STAGE/kernel-$series/vmlinuz"
    cp "$ROOT/boot/initrd.img-$release" "$STAGE/kernel-$series/initrd.img"
    echo "$release" >"$STAGE/kernel-$series/release"
    log "kernel $series: $release"
done

# --- ext4 image, filled from the directory (mke2fs -d: no loop device, no mount) ---
used_mib=$(du -sm --apparent-size "$ROOT" | cut -f1)
size_mib=$(( (used_mib * 13 / 10 + 1024 + 255) / 256 * 256 ))
log "mkfs.ext4 -d: ${used_mib} MiB of files into a ${size_mib} MiB image"
rm -f "$STAGE/base.raw"
truncate -s "${size_mib}M" "$STAGE/base.raw"
mkfs.ext4 -q -F -L v2root -d "$ROOT" "$STAGE/base.raw"
chmod 444 "$STAGE/base.raw"

T1=$(date +%s)
echo "$((T1 - T0))" >"$STAGE/build-seconds"
echo "$MIRROR" >"$STAGE/mirror"
echo "$FLAVOUR" >"$STAGE/flavour"
rm -rf --one-file-system "$OUT"
mv "$STAGE" "$OUT"
touch "$OUT/complete" "$OUT/last-used"
log "built $OUT in $((T1 - T0)) s"
# Builds of older versions of this script, unused for a day (a running session touches last-used
# when it starts; none lasts a day), go: each is about 1 GiB.
find "$CACHE_ROOT" -mindepth 1 -maxdepth 1 -type d -regextype posix-extended -regex '.*/[0-9a-f]{16}' \
    ! -path "$OUT" ! -newermt '-1 day' -print 2>/dev/null | while read -r stale; do
    if [ -z "$(find "$stale" -maxdepth 1 -name last-used -newermt '-1 day')" ]; then
        log "removing stale build $stale"
        rm -rf --one-file-system "$stale"
    fi
done
echo "$OUT" >&3
