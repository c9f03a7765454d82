#!/bin/busybox sh
# /init of the virtnode test guest: a busybox system that lives in its initramfs.
#
# It prints VIRTNODE-GUEST-BOOTED on the serial console (ttyS0), then a heartbeat line
# "VIRTNODE-HEARTBEAT <n> <uptime>" every second.  What else it does is chosen at boot,
# by key=value words on the kernel command line or by SMBIOS OEM strings (type 11) of the
# form "virtnode:key=value" (the agent renders instance metadata as such strings):
#   vn.mode=idle|dirty     dirty: keep rewriting vn.dirty_mb MiB of RAM (default 64)
#   vn.dirty_check=K       with dirty: checksum the working set every K passes
#   vn.ip=A.B.C.D/NN       configure eth0 with this address
#   vn.peer=E.F.G.H        then ping it and print PING-OK/PING-FAIL
#   vn.acpi=ignore         do not power off on the ACPI power button
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /work
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec >/dev/ttyS0 2>&1 </dev/null

for m in $(cat /mods/order); do insmod "/mods/$m.ko" 2>/dev/null; done

# key=value settings: OEM strings first, the kernel command line overrides them
: > /tmp/settings
for e in /sys/firmware/dmi/entries/11-*/raw; do
    [ -r "$e" ] || continue
    tr '\000' '\n' < "$e" | sed -n 's/^.*virtnode:\(vn\.[a-z_]*=[^ ]*\)$/\1/p' >> /tmp/settings
done
for w in $(cat /proc/cmdline); do
    case "$w" in vn.*=*) echo "$w" >> /tmp/settings ;; esac
done
setting() { sed -n "s/^$1=//p" /tmp/settings | tail -n 1; }

MODE=$(setting vn.mode); MODE=${MODE:-idle}
echo "VIRTNODE-GUEST-BOOTED mode=$MODE uptime=$(cut -d' ' -f1 /proc/uptime)"

if [ "$(setting vn.acpi)" != ignore ]; then
    for d in /sys/class/input/event*; do
        [ -e "$d" ] || continue
        [ "$(cat "$d/device/name" 2>/dev/null)" = "Power Button" ] || continue
        ev=/dev/input/${d##*/}
        [ -c "$ev" ] || continue
        ( dd if="$ev" of=/dev/null bs=24 count=1 2>/dev/null &&
          { echo "VIRTNODE-GUEST-POWEROFF"; sync; poweroff -f; } ) &
    done
fi

IP=$(setting vn.ip)
if [ -n "$IP" ]; then
    ip link set lo up
    ip link set eth0 up
    ip addr add "$IP" dev eth0
    echo "VIRTNODE-NET eth0 $IP mac=$(cat /sys/class/net/eth0/address)"
    PEER=$(setting vn.peer)
    if [ -n "$PEER" ]; then
        if ping -c 3 -W 2 "$PEER" >/dev/null 2>&1; then echo "PING-OK $PEER"
        else echo "PING-FAIL $PEER"; fi
    fi
fi

if [ "$MODE" = dirty ]; then
    MB=$(setting vn.dirty_mb); MB=${MB:-64}
    CK=$(setting vn.dirty_check); CK=${CK:-0}
    mount -t tmpfs -o size=$((MB * 2 + 16))m tmpfs /work
    dd if=/dev/urandom of=/work/a bs=1M count="$MB" 2>/dev/null
    [ "$CK" -gt 0 ] && S0=$(md5sum < /work/a)
    echo "VIRTNODE-DIRTY-SEEDED mb=$MB"
    ( i=0
      while true; do
          i=$((i + 1)); cp /work/a /work/b; cp /work/b /work/a
          if [ "$CK" -gt 0 ] && [ $((i % CK)) = 0 ]; then
              if [ "$(md5sum < /work/a)" = "$S0" ]; then echo "SUM-OK $i"; else echo "SUM-BAD $i"; fi
          fi
      done ) &
fi

n=0
while true; do
    n=$((n + 1))
    echo "VIRTNODE-HEARTBEAT $n $(cut -d' ' -f1 /proc/uptime)"
    sleep 1
done
