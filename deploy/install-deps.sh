#!/bin/bash
# deploy/install-deps.sh - installs, from Debian 12's archive, everything needed to build
# virtnode and run its tests and quick start: compilers and libraries, RabbitMQ,
# PostgreSQL, and QEMU + libvirt from bookworm-backports (Debian 12's QEMU 7.2 corrupts
# busy TCG guests during long migrations; the code still builds against libvirt 9.0).
#
#   deploy/install-deps.sh [--force]
#
# Idempotent: when every package is already installed it does nothing (--force runs apt
# anyway).  Needs root; talks only to the Debian archive.
set -euo pipefail

[ "$(id -u)" = 0 ] || { echo "install-deps: run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

# From bookworm-backports: libvirt 11 needs systemd 254's libraries, hence libsystemd-dev.
BACKPORTS=(qemu-system-x86 qemu-utils qemu-block-extra libvirt-daemon-system libvirt-clients
           libvirt-daemon-plugin-lockd
           libvirt-dev libsystemd-dev)
PACKAGES=(
    # build
    build-essential cmake pkg-config clang llvm libclang-rt-14-dev clang-format valgrind
    libglib2.0-dev libjson-c-dev librabbitmq-dev libpq-dev libcurl4-openssl-dev libxml2-dev
    libnl-3-dev libnl-route-3-dev libsqlite3-dev libmicrohttpd-dev libcmocka-dev libssl-dev
    # services the agent talks to (tests, quick start)
    rabbitmq-server postgresql-15 dbus
    # the test guest: Debian's cloud kernel and busybox, a whole-disk bootable image
    linux-image-cloud-amd64 busybox-static cpio syslinux syslinux-common mtools fdisk
    # integration tests and tools
    python3 python3-oslo.messaging python3-pika python3-psycopg2 python3-libvirt sqlite3
    python3-cryptography
    iproute2 nftables rpcbind nfs-ganesha nfs-ganesha-vfs tgt ansible-core ansible-lint curl
    ca-certificates
    genisoimage socat ebtables iptables
    # the fleet test's machines: reached by ssh, the role's apt tasks, lintian for the package
    openssh-server openssh-client python3-apt lintian
    # the kernel test VM (tests/vm): initiator, multipath and the NFS client in its initramfs
    initramfs-tools open-iscsi multipath-tools multipath-tools-boot nfs-common
    procps psmisc
    # systemd-analyze scores the unit's hardening (offline: no systemd runs here)
    systemd
)

installed() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2> /dev/null | grep -q "install ok installed" || return 1
    done
}

backports_current() { # QEMU 8 or newer means the backports set is in place
    local v
    v=$(dpkg-query -W -f='${Version}' qemu-system-x86 2> /dev/null) || return 1
    dpkg --compare-versions "$v" ge 1:8
}

if [ "${1:-}" != --force ] && installed "${BACKPORTS[@]}" "${PACKAGES[@]}" && backports_current; then
    echo "install-deps: everything is installed"
    exit 0
fi

. /etc/os-release
[ "${VERSION_CODENAME:-}" = bookworm ] ||
    echo "install-deps: this is ${PRETTY_NAME:-an unknown system}, not Debian 12; trying anyway" >&2
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" \
        > /etc/apt/sources.list.d/bookworm-backports.list
fi

# Services must not start during installation (no init system here, or not ours).
cat > /usr/sbin/policy-rc.d.virtnode << 'EOF'
#!/bin/sh
exit 101
EOF
chmod +x /usr/sbin/policy-rc.d.virtnode
restore_policy=
if [ ! -e /usr/sbin/policy-rc.d ]; then
    ln -s policy-rc.d.virtnode /usr/sbin/policy-rc.d
    restore_policy=1
fi
cleanup() {
    [ -n "$restore_policy" ] && rm -f /usr/sbin/policy-rc.d
    rm -f /usr/sbin/policy-rc.d.virtnode
}
trap cleanup EXIT

apt-get update
apt-get install -y --no-install-recommends -t bookworm-backports "${BACKPORTS[@]}"
apt-get install -y --no-install-recommends "${PACKAGES[@]}"
echo "install-deps: done"
