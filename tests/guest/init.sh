#!/bin/busybox sh
# /init of the virtnode test guest: a busybox system that lives in its initramfs.
#
# It prints VIRTNODE-GUEST-BOOTED on the serial console (ttyS0), its size ("VIRTNODE-GUEST-SIZE
# cpus=N mem_mb=M", what the kernel sees), then a heartbeat line
# "VIRTNODE-HEARTBEAT <n> <uptime>" every second.  What else it does is chosen at boot,
# by key=value words on the kernel command line or by SMBIOS OEM strings (type 11) of the
# form "virtnode:key=value" (the agent renders instance metadata as such strings):
#   vn.mode=idle|dirty     dirty: keep rewriting vn.dirty_mb MiB of RAM (default 64)
#   vn.dirty_check=K       with dirty: checksum the working set every K passes
#   vn.ip=A.B.C.D/NN       configure eth0 with this address (else: from the config drive)
#   vn.peer=E.F.G.H        then ping it every second: "PING-OK|PING-FAIL <n> <peer>"
#   vn.listen=PORT         answer TCP connections on PORT with "hello"
#   vn.probe=E.F.G.H:PORT  connect there every second: "NC-OK|NC-FAIL <n> <addr>"
#   vn.hotplug_ip=A.B.C.D/NN  give a NIC plugged in later this address ("VIRTNODE-NIC-ADDED
#                          <if> <mac>", "VIRTNODE-NIC-REMOVED <if>" as NICs come and go)
#   vn.hotplug_peer=E.F.G.H   and ping this through it: "HOTPLUG-PING-OK|FAIL <n>"
#   vn.spoof=ip|mac        misbehave: use another IP (the assigned one + 100) or another
#                          MAC than the config drive gives
#   vn.acpi=ignore         do not power off on the ACPI power button
#   vn.rootmark=1          a marker on the root disk (vda, at 48 MiB, past the image): one
#                          found there is reported ("VIRTNODE-ROOT-READ <mark>"), else a new
#                          one is written, synced and reported ("VIRTNODE-ROOT-WROTE <mark>")
#
# A config drive (a disk labelled "config-2", ISO 9660) is read when present: every interface
# whose MAC a link of openstack/latest/network_data.json names gets that link's
# addresses ("VIRTNODE-NET <if> <addr>/<prefix> mac=<mac>").
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /work
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec >/dev/ttyS0 2>&1 </dev/null

for m in $(cat /mods/order); do e=$(insmod "/mods/$m.ko" 2>&1) || echo "VIRTNODE-INSMOD-FAIL $m $e"; done

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
echo "VIRTNODE-GUEST-SIZE cpus=$(grep -c ^processor /proc/cpuinfo) mem_mb=$(( $(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo) / 1024 ))"

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

# the root disk's marker: what shows a disk was kept, copied, or made anew
if [ "$(setting vn.rootmark)" = 1 ] && [ -b /dev/vda ]; then
    mark=$(dd if=/dev/vda bs=512 skip=$((48 * 2048)) count=1 2>/dev/null | tr -d '\000' | head -c 64)
    case "$mark" in
    VNROOT-*) echo "VIRTNODE-ROOT-READ $mark" ;;
    *) mark="VNROOT-$(cat /proc/sys/kernel/random/uuid)"
       printf '%s' "$mark" | dd of=/dev/vda bs=512 seek=$((48 * 2048)) conv=sync,fsync 2>/dev/null
       echo "VIRTNODE-ROOT-WROTE $mark" ;;
    esac
fi

# network_data.json, written by virtnode on one line: one object per link and per network
netdata() {
    mkdir -p /cd
    dev=
    for d in /dev/vd?; do
        # the ISO 9660 volume label sits at byte 32808 (busybox has no blkid here)
        [ -b "$d" ] && [ "$(dd if="$d" bs=1 skip=32808 count=8 2>/dev/null)" = config-2 ] &&
            dev=$d
    done
    [ -n "$dev" ] || return 1
    mount -t iso9660 -o ro "$dev" /cd 2>/dev/null || return 1
    f=/cd/openstack/latest/network_data.json
    [ -r "$f" ] || return 1
    sed 's/},{/}\n{/g' "$f" > /tmp/netdata
    umount /cd
}
# the first "key":"value" of a line (a network's routes come later, with netmasks of their own)
field() { grep -o "\"$1\":\"[^\"]*\"" | head -n 1 | cut -d'"' -f4; }

ip link set lo up
SPOOF=$(setting vn.spoof)
IP=$(setting vn.ip)
if [ -n "$IP" ]; then
    ip link set eth0 up
    ip addr add "$IP" dev eth0
    echo "VIRTNODE-NET eth0 $IP mac=$(cat /sys/class/net/eth0/address)"
elif netdata; then
    grep '"ip_address"' /tmp/netdata | while read -r net; do
        link=$(echo "$net" | field link)
        addr=$(echo "$net" | field ip_address)
        mask=$(echo "$net" | field netmask)
        mac=$(grep "\"id\":\"$link\"" /tmp/netdata | field ethernet_mac_address)
        dev=
        for d in /sys/class/net/*; do
            [ "$(cat "$d/address")" = "$mac" ] && dev=${d##*/}
        done
        [ -n "$dev" ] || { echo "VIRTNODE-NET-MISSING $mac"; continue; }
        eval "$(ipcalc -p "$addr" "$mask")"
        if [ "$SPOOF" = ip ]; then
            last=${addr##*.}; addr=${addr%.*}.$(( (last + 100) % 250 + 2 ))
        fi
        if [ "$SPOOF" = mac ]; then
            ip link set "$dev" address fa:16:3e:99:99:99
        fi
        ip link set "$dev" up
        ip addr add "$addr/$PREFIX" dev "$dev"
        echo "VIRTNODE-NET $dev $addr/$PREFIX mac=$(cat /sys/class/net/$dev/address)"
    done
fi
PEER=$(setting vn.peer)
if [ -n "$PEER" ]; then
    ( i=0
      while true; do
          i=$((i + 1))
          if ping -c 1 -W 1 "$PEER" >/dev/null 2>&1; then echo "PING-OK $i $PEER"; sleep 0.5
          else echo "PING-FAIL $i $PEER"; sleep 1; fi
      done ) &
fi
PORT=$(setting vn.listen)
if [ -n "$PORT" ]; then
    printf '#!/bin/sh\necho hello\n' > /tmp/hello && chmod +x /tmp/hello
    nc -ll -p "$PORT" -e /tmp/hello &
fi
PROBE=$(setting vn.probe)
if [ -n "$PROBE" ]; then
    ( i=0
      while true; do
          i=$((i + 1))
          if [ "$(nc -w 1 "${PROBE%:*}" "${PROBE##*:}" </dev/null 2>/dev/null)" = hello ]; then
              echo "NC-OK $i $PROBE"
          else echo "NC-FAIL $i $PROBE"; fi
          sleep 1
      done ) &
fi

HOTIP=$(setting vn.hotplug_ip)
HOTPEER=$(setting vn.hotplug_peer)
( ls /sys/class/net > /tmp/nics.boot
  cp /tmp/nics.boot /tmp/nics
  i=0
  while true; do
      sleep 1
      ls /sys/class/net > /tmp/nics.now
      for d in $(cat /tmp/nics.now); do
          grep -qx "$d" /tmp/nics && continue
          echo "VIRTNODE-NIC-ADDED $d $(cat /sys/class/net/$d/address)"
          if [ -n "$HOTIP" ]; then
              ip link set "$d" up
              ip addr add "$HOTIP" dev "$d"
              echo "$d" > /tmp/hotplugged
          fi
      done
      for d in $(cat /tmp/nics); do
          grep -qx "$d" /tmp/nics.now || echo "VIRTNODE-NIC-REMOVED $d"
      done
      cp /tmp/nics.now /tmp/nics
      if [ -n "$HOTPEER" ] && [ -s /tmp/hotplugged ] &&
         grep -qx "$(cat /tmp/hotplugged)" /tmp/nics.now; then
          i=$((i + 1))
          if ping -c 1 -W 1 "$HOTPEER" > /dev/null 2>&1; then echo "HOTPLUG-PING-OK $i"
          else echo "HOTPLUG-PING-FAIL $i"; fi
      fi
  done ) &

# vn.iobench=MB: sequential direct write then read of MB MiB, timed, on every volume that
# appears (after its first MiB) and, at boot, on the local root overlay (from 512 MiB on,
# past the image): "VIRTNODE-IOBENCH <serial|local> <write ms> <read ms>".
IOBENCH=$(setting vn.iobench)
ms() { awk '{printf "%d", $1 * 1000}' /proc/uptime; }
iobench() { # dev name offset_mb
    t0=$(ms)
    dd if=/dev/zero of="$1" bs=1M count="$IOBENCH" seek="$3" oflag=direct conv=fsync 2>/dev/null
    t1=$(ms)
    dd if="$1" of=/dev/null bs=1M count="$IOBENCH" skip="$3" iflag=direct 2>/dev/null
    t2=$(ms)
    echo "VIRTNODE-IOBENCH $2 $((t1 - t0)) $((t2 - t1))"
}
[ -n "$IOBENCH" ] && iobench /dev/vda local 512

# Volumes: a disk with a serial (virtio's /sys/block/X/serial) is a volume.  On its
# appearance the guest reads its first sector: a marker written earlier is reported,
# otherwise one is written (synchronously, past the page cache).  vn.volwrite=SERIAL
# writes a new marker to that volume whenever it appears.
( : > /tmp/vols
  while true; do
      : > /tmp/vols.now
      for s in /sys/block/vd? /sys/block/sd?; do
          [ -r "$s/serial" ] || continue
          serial=$(cat "$s/serial" 2>/dev/null)
          [ -n "$serial" ] || continue
          dev=/dev/${s##*/}
          echo "$serial" >> /tmp/vols.now
          grep -qx "$serial" /tmp/vols && continue
          mark=$(dd if="$dev" bs=512 count=1 2>/dev/null | tr -d '\000' | head -c 64)
          case "$mark" in
          VNMARK-*) echo "VIRTNODE-VOL-READ $serial ${s##*/} $mark" ;;
          *) mark="VNMARK-$serial-$(cut -d' ' -f1 /proc/uptime)"
             printf '%s' "$mark" | dd of="$dev" bs=512 count=1 conv=sync,fsync 2>/dev/null &&
                 echo "VIRTNODE-VOL-WROTE $serial ${s##*/} $mark" ||
                 echo "VIRTNODE-VOL-WRITE-FAILED $serial ${s##*/}" ;;
          esac
          [ -n "$IOBENCH" ] && iobench "$dev" "$serial" 1
      done
      for serial in $(cat /tmp/vols); do
          grep -qx "$serial" /tmp/vols.now || echo "VIRTNODE-VOL-REMOVED $serial"
      done
      cp /tmp/vols.now /tmp/vols
      sleep 1
  done ) &

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
