#!/bin/bash
# deploy/quickstart.sh - virtnode's main job on one Debian 12 machine, from nothing:
# installs what is missing, builds, starts a local RabbitMQ, PostgreSQL and libvirtd
# (tests/lib/harness.sh, on ports of their own), starts the agent, boots the test guest
# from a scheduling message sent with virtnodectl, and shows it running and the host's
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

[api]
listen = 127.0.0.1:$API_PORT
EOF
"$BUILD/bin/virtnoded" --config "$CONF" --check-config
# the agent runs in the namespaces of the harness's libvirt host, as on a real host
setsid bash "$HARNESS" ns "$RUN" a "$BUILD/bin/virtnoded" --config "$CONF" \
    > "$RUN/agents/$HOST/virtnoded.log" 2>&1 < /dev/null &
for i in $(seq 150); do
    curl -fsS "http://127.0.0.1:$API_PORT/readyz" > /dev/null 2>&1 && break
    if [ "$i" = 150 ]; then
        echo "virtnoded did not become ready; its log:" >&2
        tail -n 30 "$RUN/agents/$HOST/virtnoded.log" >&2
        exit 1
    fi
    sleep 0.2
done
curl -fsS "http://127.0.0.1:$API_PORT/readyz"
echo

say "publishing the test guest image over HTTP"
IMAGE=$(envget GUEST_IMAGE)
cp "$IMAGE" "$RUN/images/guest.qcow2"
SHA=$(sha256sum "$RUN/images/guest.qcow2" | cut -d' ' -f1)
SIZE=$(stat -c %s "$RUN/images/guest.qcow2")
echo "$(envget IMAGE_URL)/guest.qcow2 ($SIZE bytes, sha256 $SHA)"

CTL=("$BUILD/bin/virtnodectl" --config "$CONF")
say "booting a guest: build_and_run_instance to $HOST"
UUID=$(/usr/bin/python3 -c 'import uuid; print(uuid.uuid4())')
"${CTL[@]}" boot --uuid "$UUID" --name quickstart-vm --flavor m1.tiny --vcpus 1 --memory-mb 128 \
    --root-gb 1 --image-id guest-1 --image-url "$(envget IMAGE_URL)/guest.qcow2" \
    --image-sha256 "$SHA" --image-size "$SIZE"

say "its serial console"
for i in $(seq 120); do
    "${CTL[@]}" console "$UUID" 2> /dev/null | grep -q VIRTNODE-GUEST-BOOTED && break
    [ "$i" = 120 ] && { echo "no boot marker on the console" >&2; exit 1; }
    sleep 0.5
done
"${CTL[@]}" console "$UUID" --lines 8

say "libvirt's view"
virsh -c "$(envget HOST_A_URI)" list --all

say "the host's capacity row in PostgreSQL"
sleep 1.5 # the capacity is written within a second of the change
"${CTL[@]}" host "$HOST"

cat << EOF

virtnode is running: guest $UUID on host $HOST.
  ${CTL[*]} list
  ${CTL[*]} delete $UUID
  agent log: $RUN/agents/$HOST/virtnoded.log    status: http://127.0.0.1:$API_PORT/metrics
Stop everything with: $0 stop
EOF
