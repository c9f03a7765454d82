#!/bin/sh
# PID 1 of the kernel test VM (rdinit=/vmtest-init.sh).  Its kernel command line names the
# portals and addresses: vm_p1= vm_p2= (portals) vm_a1= vm_a2= (eth0, eth1 addresses)
# vm_iqn= vm_user= vm_pass= (the target and its CHAP) vm_vid= vm_vaddr= vm_vpeer= (VLAN).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p /proc /sys /dev /run /tmp /var/lock
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
exec > /dev/ttyS0 2>&1
arg() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" /proc/cmdline; }
echo "VMTEST boot $(uname -r)"
for m in virtio_pci virtio_net iscsi_tcp sd_mod dm_multipath dm_round_robin dm_service_time \
         8021q bridge nfs nfsv3 nfsv4; do
    modprobe $m || echo "VMTEST modprobe $m failed"
done
ip link set lo up
for i in 0 1 2; do ip link set eth$i up; done
ip addr add "$(arg vm_a1)" dev eth0
ip addr add "$(arg vm_a2)" dev eth1
/usr/lib/systemd/systemd-udevd --daemon --resolve-names=never
udevadm trigger --action=add
udevadm settle -t 20
mkdir -p /etc/iscsi/nodes /etc/iscsi/send_targets /etc/iscsi/ifaces /run/lock/iscsi /var/lib/iscsi
# a dead portal fails its I/O over to the other path after 5 s (multipath's advice)
sed 's/^node.session.timeo.replacement_timeout = .*/node.session.timeo.replacement_timeout = 5/' \
    /etc/iscsid.conf.vm > /etc/iscsi/iscsid.conf
echo "InitiatorName=iqn.2010-10.org.virtnode:vmtest" > /etc/iscsi/initiatorname.iscsi
echo "root:x:0:0:root:/:/bin/sh" > /etc/passwd
echo "root:x:0:" > /etc/group
iscsid -f > /tmp/iscsid.log 2>&1 &
multipathd
sleep 1
P1=$(arg vm_p1)
if ! vn-vmtest iscsi "$P1" "$(arg vm_p2)" "$(arg vm_iqn)" "$(arg vm_user)" "$(arg vm_pass)"; then
    echo "VMTEST-DIAG sessions:"; iscsiadm -m session -P 3 2>&1 | head -60
    echo "VMTEST-DIAG sysfs:"; ls -lR /sys/class/iscsi_session/*/device/ 2>&1 | head -60
    echo "VMTEST-DIAG block: $(ls /sys/block)"; dmesg | tail -30
fi
vn-vmtest nfs "$P1:/export"
vn-vmtest vlan eth2 "$(arg vm_vid)" "$(arg vm_vaddr)" "$(arg vm_vpeer)"
echo "VMTEST DONE"
sync
poweroff -f
