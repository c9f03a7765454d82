#!/bin/bash
# deploy/quickstart.sh - virtnode's main job on one Debian 12 machine, from nothing:
# installs what is missing, builds, starts a local RabbitMQ, PostgreSQL and libvirtd
# (tests/lib/harness.sh, on ports of their own), starts the agent, boots the test guest
# from a scheduling message sent with virtnodectl — with a network port and an NFS volume
# — and shows it running, reaching its network and writing to its volume, and the host's
# capacity row.
#
#   deploy/quickstart.sh           do all of that; services and guest stay up afterwards
#   deploy/quickstart.sh stop      stop everything it started
#
# BUILD (default build/) is the build folder; everything runs under $BUILD/quickstart.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$SRC/build}
RUN=$BUILD/quickstart
HARNESS=$SRC/tests/lib/harness.sh
HOST=quickstart-1

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [ "${1:-}" = stop ]; then
    bash "$HARNESS" stop "$RUN"
    exit 0
fi
[ $# -eq 0 ] || { echo "usage: $0 [stop]" >&2; exit 2; }

say "installing what is missing (Debian packages)"
bash "$SRC/deploy/install-deps.sh"

say "building"
cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
cmake --build "$BUILD" -j"$(nproc)" --target virtnoded virtnodectl

say "starting RabbitMQ, PostgreSQL and libvirtd"
bash "$HARNESS" start "$RUN"
envget() { sed -n "s/^$1='\(.*\)'$/\1/p" "$RUN/env" | tail -n 1; }
# the host: a libvirtd in a network namespace of its own (its bridges and guests stay in
# it; the services reach it on its loopback), with an NFS server and an iSCSI target
say "starting a libvirt host with its own network, and its NFS and iSCSI servers"
bash "$HARNESS" nethost-start "$RUN" na
bash "$HARNESS" storage-start "$RUN" na

say "starting virtnoded ($HOST)"
API_PORT=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
CONF=$RUN/agents/$HOST/virtnode.conf
mkdir -p "$RUN/agents/$HOST"
cat > "$CONF" << EOF
# virtnode.conf of the quick start (docs/configuration.md lists every option)
[DEFAULT]
host = $HOST
state_path = $RUN/agents/$HOST/state
instances_path = $(envget SHARED_DIR)/instances

[amqp]
transport_url = $(envget AMQP_URL)

[database]
connection = $(envget PG_DSN)

[libvirt]
uri = qemu:///system
# this machine runs guests under TCG; production hosts use kvm
virt_type = qemu

[network]
# the host's "physical" interfaces (veth ends inside its namespace)
physical_interface_mappings = physnet1:vnphys0,physnet2:vnphys1

[storage]
# this machine's kernel has no NFS client or iSCSI initiator: QEMU's own clients serve
# the volumes (production hosts keep the kernel drivers, the defaults)
nfs_driver = qemu
iscsi_driver = qemu

[api]
listen = 127.0.0.1:$API_PORT
EOF
"$BUILD/bin/virtnoded" --config "$CONF" --check-config
# the agent runs in the namespaces of the harness's libvirt host, as on a real host
setsid bash "$HARNESS" ns "$RUN" na "$BUILD/bin/virtnoded" --config "$CONF" \
    > "$RUN/agents/$HOST/virtnoded.log" 2>&1 < /dev/null &
for i in $(seq 150); do
    # the status endpoint listens on the host's own loopback, inside its namespace
    bash "$HARNESS" ns "$RUN" na curl -fsS "http://127.0.0.1:$API_PORT/readyz" > /dev/null 2>&1 && break
    if [ "$i" = 150 ]; then
        echo "virtnoded did not become ready; its log:" >&2
        tail -n 30 "$RUN/agents/$HOST/virtnoded.log" >&2
        exit 1
    fi
    sleep 0.2
done
bash "$HARNESS" ns "$RUN" na curl -fsS "http://127.0.0.1:$API_PORT/readyz"
echo

say "publishing the test guest image over HTTP"
IMAGE=$(envget GUEST_IMAGE)
cp "$IMAGE" "$RUN/images/guest.qcow2"
SHA=$(sha256sum "$RUN/images/guest.qcow2" | cut -d' ' -f1)
SIZE=$(stat -c %s "$RUN/images/guest.qcow2")
echo "$(envget IMAGE_URL)/guest.qcow2 ($SIZE bytes, sha256 $SHA)"

say "a network port and an NFS volume for it"
VOLUME=$(/usr/bin/python3 -c 'import uuid; print(uuid.uuid4())')
truncate -s 64M "$(envget STORAGE_EXPORT_DIR)/volume-$VOLUME"
cat > "$RUN/port.json" << EOF
{"port_id": "$(/usr/bin/python3 -c 'import uuid; print(uuid.uuid4())')",
 "network_id": "$(/usr/bin/python3 -c 'import uuid; print(uuid.uuid4())')",
 "mac": "fa:16:3e:00:00:10", "mtu": 1400, "network_type": "flat",
 "physical_network": "physnet1", "port_security": true,
 "fixed_ips": [{"ip_address": "192.0.2.10",
                "subnet": {"cidr": "192.0.2.0/24", "gateway": "192.0.2.1", "dns": []}}],
 "security_groups": [{"rules": [{"direction": "egress", "ethertype": "IPv4"},
                                {"direction": "ingress", "ethertype": "IPv4",
                                 "protocol": "icmp"}]}]}
EOF
cat > "$RUN/volume.json" << EOF
{"volume_id": "$VOLUME", "delete_on_termination": false,
 "connection_info": {"driver_volume_type": "nfs",
   "data": {"export": "127.0.0.1:$(envget STORAGE_EXPORT_DIR)", "name": "volume-$VOLUME",
            "format": "raw"}}}
EOF
cat "$RUN/port.json" "$RUN/volume.json"

CTL=("$BUILD/bin/virtnodectl" --config "$CONF")
say "booting a guest: build_and_run_instance to $HOST"
UUID=$(/usr/bin/python3 -c 'import uuid; print(uuid.uuid4())')
"${CTL[@]}" boot --uuid "$UUID" --name quickstart-vm --flavor m1.tiny --vcpus 1 --memory-mb 128 \
    --root-gb 1 --image-id guest-1 --image-url "$(envget IMAGE_URL)/guest.qcow2" \
    --image-sha256 "$SHA" --image-size "$SIZE" --port "$RUN/port.json" \
    --volume "$RUN/volume.json"

say "its serial console"
for i in $(seq 120); do
    "${CTL[@]}" console "$UUID" 2> /dev/null | grep -q VIRTNODE-GUEST-BOOTED && break
    [ "$i" = 120 ] && { echo "no boot marker on the console" >&2; exit 1; }
    sleep 0.5
done
for i in $(seq 120); do
    "${CTL[@]}" console "$UUID" 2> /dev/null | grep -q "VIRTNODE-VOL-WROTE" && break
    [ "$i" = 120 ] && { echo "the guest did not write to its volume" >&2; exit 1; }
    sleep 0.5
done
"${CTL[@]}" console "$UUID" --lines 12
echo "the guest configured its NIC from the config drive (VIRTNODE-NET) and wrote a marker"
echo "to its volume (VIRTNODE-VOL-WROTE); the NFS server's file now begins with:"
head -c 64 "$(envget STORAGE_EXPORT_DIR)/volume-$VOLUME" | tr -d '\000'
echo

say "libvirt's view, and the host's bridge"
virsh -c "$(envget HOST_NA_URI)" list --all
virsh -c "$(envget HOST_NA_URI)" domblklist "instance-$UUID"
virsh -c "$(envget HOST_NA_URI)" domiflist "instance-$UUID"
bash "$HARNESS" ns "$RUN" na ip -br link show type bridge

say "the host's capacity row in PostgreSQL"
sleep 1.5 # the capacity is written within a second of the change
"${CTL[@]}" host "$HOST"

cat << EOF

virtnode is running: guest $UUID on host $HOST.
  ${CTL[*]} list
  ${CTL[*]} delete $UUID
  agent log: $RUN/agents/$HOST/virtnoded.log
  status: bash $HARNESS ns $RUN na curl http://127.0.0.1:$API_PORT/metrics
Stop everything with: $0 stop
EOF
