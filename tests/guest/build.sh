#!/bin/bash
# Build the virtnode test guest: a whole-disk qcow2 image (MBR, one FAT partition with
# syslinux, Debian's cloud kernel and a busybox initramfs) that boots under TCG in seconds.
# Made from Debian packages only: linux-image-cloud-amd64, busybox-static, syslinux,
# syslinux-common, mtools, fdisk, qemu-utils, cpio.
#
#   tests/guest/build.sh [--force] [OUT.qcow2]
#
# The image is cached: without --force an existing OUT whose recorded inputs (kernel
# version, busybox, this folder's scripts) are unchanged is kept.  Default OUT is
# ${VIRTNODE_CACHE_DIR:-$HOME/.cache/virtnode}/guest/virtnode-guest.qcow2.
# Prints the image path on the last line.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
force=0
if [ "${1:-}" = --force ]; then force=1; shift; fi
CACHE=${VIRTNODE_CACHE_DIR:-$HOME/.cache/virtnode}
OUT=${1:-$CACHE/guest/virtnode-guest.qcow2}

die() { echo "guest build: $*" >&2; exit 1; }

KERNEL=$(ls /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$KERNEL" ] || die "no /boot/vmlinuz-*-cloud-amd64: install linux-image-cloud-amd64"
KVER=${KERNEL#/boot/vmlinuz-}
MODDIR=/lib/modules/$KVER
[ -d "$MODDIR" ] || die "no $MODDIR for kernel $KVER"
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] && ! ldd "$BUSYBOX" >/dev/null 2>&1 ||
    die "$BUSYBOX is missing or not static: install busybox-static"
for t in syslinux mcopy mformat sfdisk qemu-img cpio gzip; do
    command -v "$t" >/dev/null || die "'$t' not found (see the package list at the top of $0)"
done
MBR=/usr/lib/syslinux/mbr/mbr.bin
[ -f "$MBR" ] || die "$MBR missing: install syslinux-common"

stamp=$(cat "$HERE/init.sh" "$HERE/build.sh" | sha256sum | cut -c1-16)
stamp="$KVER $(sha256sum < "$BUSYBOX" | cut -c1-16) $stamp"
if [ $force = 0 ] && [ -f "$OUT" ] && [ "$(cat "$OUT.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "$OUT"
    exit 0
fi

W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
R=$W/root
mkdir -p "$R"/{bin,dev,proc,sys,tmp,mods}
cp "$BUSYBOX" "$R/bin/busybox"
cp "$HERE/init.sh" "$R/init"
chmod 755 "$R/init"

# modules the guest needs (virtio transport, disk, NIC, ACPI power button, ISO 9660 for the
# config drive), each after the modules it depends on
add_module() {
    local m=$1 f d
    grep -qx "$m" "$R/mods/order" 2>/dev/null && return 0
    f=$(modinfo -k "$KVER" -n "$m" 2>/dev/null) || die "module $m not found for $KVER"
    case "$f" in (builtin*) return 0 ;; esac
    for d in $(modinfo -k "$KVER" -F depends "$m" | tr ',' ' '); do
        add_module "$d"
    done
    case "$f" in
    (*.ko) cp "$f" "$R/mods/$m.ko" ;;
    (*.ko.xz) xz -dc "$f" > "$R/mods/$m.ko" ;;
    (*) die "unexpected module file $f" ;;
    esac
    echo "$m" >> "$R/mods/order"
}
: > "$R/mods/order"
for m in virtio_pci virtio_blk virtio_net evdev button isofs; do
    add_module "$m"
done
(cd "$R" && find . | sort | cpio -o -H newc --quiet --reproducible) | gzip -9n > "$W/initrd.gz"

# one FAT16 partition starting at 1 MiB, syslinux in its boot sector, MBR boot code
size_mb=32
part_off=$((1024 * 1024))
truncate -s "${size_mb}M" "$W/disk.raw"
printf 'label: dos\nstart=2048, type=6, bootable\n' | sfdisk -q "$W/disk.raw"
part_sectors=$(( (size_mb * 1024 * 1024 - part_off) / 512 ))
truncate -s $((part_sectors * 512)) "$W/part.raw"
mformat -i "$W/part.raw" -v VNGUEST -H 2048 ::
cat > "$W/syslinux.cfg" <<CFG
DEFAULT virtnode
PROMPT 0
TIMEOUT 0
LABEL virtnode
  KERNEL /vmlinuz
  INITRD /initrd.gz
  APPEND console=ttyS0 quiet panic=-1
CFG
mcopy -i "$W/part.raw" "$KERNEL" ::/vmlinuz
mcopy -i "$W/part.raw" "$W/initrd.gz" ::/initrd.gz
mcopy -i "$W/part.raw" "$W/syslinux.cfg" ::/syslinux.cfg
syslinux --install "$W/part.raw"
dd if="$W/part.raw" of="$W/disk.raw" bs=1M seek=1 conv=notrunc status=none
dd if="$MBR" of="$W/disk.raw" bs=440 count=1 conv=notrunc status=none

mkdir -p "$(dirname "$OUT")"
qemu-img convert -q -c -f raw -O qcow2 "$W/disk.raw" "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "$stamp" > "$OUT.stamp"
echo "guest image built: $(du -k "$OUT" | cut -f1) KiB, kernel $KVER" >&2
echo "$OUT"
