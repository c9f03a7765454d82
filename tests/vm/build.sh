#!/bin/bash
# Builds the kernel test VM's initramfs with Debian's mkinitramfs: the cloud kernel's
# modules (iscsi_tcp, dm-multipath, nfs, 8021q, bridge), open-iscsi, multipath-tools,
# udev, and vn-vmtest (the agent's own storage and network code, tests/vm/vmtest.c).
#   tests/vm/build.sh VN_VMTEST_BINARY OUT.img
# Prints the kernel to boot it with.  Needs: initramfs-tools, open-iscsi, multipath-tools,
# nfs-common, busybox, linux-image-cloud-amd64.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${1:?usage: $0 VN_VMTEST OUT.img}
OUT=${2:?usage: $0 VN_VMTEST OUT.img}
KERNEL=$(ls /boot/vmlinuz-*-cloud-amd64 2> /dev/null | sort -V | tail -n 1)
[ -n "$KERNEL" ] || { echo "no cloud kernel in /boot" >&2; exit 1; }
KVER=${KERNEL#/boot/vmlinuz-}
C=$(mktemp -d)
trap 'rm -rf "$C"' EXIT
cp -r /etc/initramfs-tools/. "$C/"
cp "$HERE/hook" "$C/hooks/zz-vntest"
chmod +x "$C/hooks/zz-vntest"
printf 'MODULES=list\nBUSYBOX=y\nCOMPRESS=gzip\n' > "$C/conf.d/zz-vntest"
VNTEST_DIR=$HERE VNTEST_BIN=$(readlink -f "$BIN") mkinitramfs -d "$C" -o "$OUT" "$KVER" >&2
echo "$KERNEL"
