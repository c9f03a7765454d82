#!/bin/bash
# Real services for one test run, each on its own ports and folders so it never collides
# with services already running on the machine:
#   - a RabbitMQ node (own node name, AMQP/distribution/epmd ports, loopback only), with a
#     TLS listener too (AMQPS_PORT, client certificates required)
#   - a PostgreSQL 15 cluster (initdb in the run folder, trust auth, loopback only; TLS
#     on, and user vnssl only with a client certificate)
#   - the certificates of both, from tests/lib/pki.py (PKI_DIR)
#   - two libvirtd "hosts", a and b, each in its own mount+UTS namespace with private
#     /run/libvirt, /var/lib/libvirt, /etc/libvirt, ..., listening on 127.0.0.2 and
#     127.0.0.3 (TCP, no auth), with its own migration port range and its own private
#     folder bind-mounted over $RUN/private (non-shared instance storage)
#   - an HTTP image server on 127.0.0.1 that counts requests (tests/lib/imageserver.py)
#   - the test guest image (tests/guest/build.sh, cached)
#
#   harness.sh start RUN_DIR            start all; writes RUN_DIR/env (KEY='value' lines)
#   harness.sh stop RUN_DIR             stop all, kill guests and agents of this run
#   harness.sh rabbit-stop|rabbit-start RUN_DIR
#   harness.sh pg-stop|pg-start RUN_DIR
#   harness.sh host-stop|host-start RUN_DIR a|b
#   harness.sh host-crash RUN_DIR a|b         kills host a|b whole (agents too), keeps its domains
#   harness.sh qemu-tls-passphrase RUN_DIR    the passphrase of hosts a and b QEMU TLS keys
#   harness.sh ns RUN_DIR a|b CMD...     run CMD in host a's (or b's) namespaces
#   harness.sh fleet-start|fleet-stop RUN_DIR   two bare machines reachable by ssh
#   harness.sh rabbitmqctl RUN_DIR ARGS...       rabbitmqctl against this run's node
#   harness.sh cluster-start|cluster-stop RUN_DIR  a 3-node RabbitMQ cluster (CLUSTER_URLS)
#   harness.sh cluster-kill|cluster-node-start RUN_DIR N   kill -9 / start node N
#   harness.sh cluster-ctl RUN_DIR N ARGS...       rabbitmqctl against node N
#
# Every failure says which service failed and why, and exits non-zero.  'start' first
# cleans up whatever an interrupted earlier run in RUN_DIR left behind.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
PY=/usr/bin/python3
# the passphrase of the QEMU migration TLS keys of hosts a and b, and the libvirt secret
# that holds it (qemu.conf migrate_tls_x509_secret_uuid)
QEMU_TLS_PASSPHRASE=virtnode-test-qemu-tls
QEMU_TLS_SECRET=5b1c7e2a-8d3f-4a6e-9c21-0e4f7a9b3d58
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
RABBIT_BIN=/usr/lib/rabbitmq/bin

die() { echo "harness: $*" >&2; exit 1; }
log() { echo "harness: $*" >&2; }

cmd=${1:-}; RUN=${2:-}
[ -n "$cmd" ] && [ -n "$RUN" ] || die "usage: $0 start|stop|...|ns RUN_DIR [...]"
mkdir -p "$RUN"
RUN=$(cd "$RUN" && pwd)
ENVF=$RUN/env

envget() { sed -n "s/^$1='\(.*\)'$/\1/p" "$ENVF" 2>/dev/null | tail -n 1; }
envset() {
    local k=$1 v=$2
    touch "$ENVF"
    sed -i "/^$k=/d" "$ENVF"
    printf "%s='%s'\n" "$k" "$v" >> "$ENVF"
}

free_ports() { # N -> N free TCP ports on loopback, one per line
    "$PY" "$HERE/ports.py" "$1"
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() { # HOST PORT SECONDS
    local i
    for i in $(seq $(($3 * 10))); do
        port_open "$1" "$2" && return 0
        sleep 0.1
    done
    port_open "$1" "$2"
}

# ---------------------------------------------------------------- RabbitMQ
rabbit_env() {
    local R=$RUN/rabbitmq
    export HOME=$R RABBITMQ_NODENAME=$(envget RABBIT_NODE)
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$(envget AMQP_PORT)
    export RABBITMQ_DIST_PORT=$(envget RABBIT_DIST_PORT) ERL_EPMD_PORT=$(envget RABBIT_EPMD_PORT)
    export ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_MNESIA_BASE=$R/mnesia RABBITMQ_LOG_BASE=$R/log
    export RABBITMQ_CONFIG_FILE=$R/rabbitmq RABBITMQ_ENABLED_PLUGINS_FILE=$R/enabled_plugins
    export RABBITMQ_PID_FILE=$R/pid
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

rabbit_start() {
    local R=$RUN/rabbitmq
    mkdir -p "$R/mnesia" "$R/log"
    echo '[].' > "$R/enabled_plugins"
    cat > "$R/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$(envget AMQP_PORT)
listeners.ssl.1 = 127.0.0.1:$(envget AMQPS_PORT)
ssl_options.cacertfile = $RUN/pki/ca.pem
ssl_options.certfile = $RUN/pki/server.pem
ssl_options.keyfile = $RUN/pki/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
loopback_users = none
log.file.level = warning
EOF
    (
        rabbit_env
        "$RABBIT_BIN/rabbitmq-server" -detached > "$R/start.out" 2>&1 ||
            { cat "$R/start.out" >&2; exit 1; }
        if ! timeout 90 "$RABBIT_BIN/rabbitmqctl" -n "$RABBITMQ_NODENAME" wait "$R/pid" \
            --timeout 80 > "$R/wait.out" 2>&1; then
            log "RabbitMQ did not start:"; tail -n 20 "$R/wait.out" "$R"/log/*.log >&2 || true
            exit 1
        fi
    ) || die "RabbitMQ failed to start (logs in $R/log)"
    log "RabbitMQ up on 127.0.0.1:$(envget AMQP_PORT)"
}

rabbit_stop() {
    local R=$RUN/rabbitmq
    [ -f "$R/pid" ] || return 0
    local pid; pid=$(cat "$R/pid" 2>/dev/null || true)
    (
        rabbit_env
        timeout 30 "$RABBIT_BIN/rabbitmqctl" -n "$RABBITMQ_NODENAME" stop "$R/pid" \
            > "$R/stop.out" 2>&1 || true
    )
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
    rm -f "$R/pid"
}

# ---------------------------------------------------------------- RabbitMQ cluster
# Three more RabbitMQ nodes clustered together (the cluster fault tests): node N is
# CLUSTER_NODE_N with AMQP on 127.0.0.1:CLUSTER_PORT_N; CLUSTER_URLS lists the three.
# They share one Erlang cookie (HOME) and this run's epmd.
cluster_env() { # N
    local R=$RUN/rabbit-cluster
    export HOME=$R RABBITMQ_NODENAME=$(envget "CLUSTER_NODE_$1")
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$(envget "CLUSTER_PORT_$1")
    export RABBITMQ_DIST_PORT=$(envget "CLUSTER_DIST_$1") ERL_EPMD_PORT=$(envget RABBIT_EPMD_PORT)
    export ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_MNESIA_BASE=$R/n$1/mnesia RABBITMQ_LOG_BASE=$R/n$1/log
    export RABBITMQ_CONFIG_FILE=$R/n$1/rabbitmq RABBITMQ_ENABLED_PLUGINS_FILE=$R/n$1/enabled_plugins
    export RABBITMQ_PID_FILE=$R/n$1/pid
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

cluster_node_start() { # N
    local R=$RUN/rabbit-cluster/n$1
    mkdir -p "$R/mnesia" "$R/log"
    echo '[].' > "$R/enabled_plugins"
    printf '%s\n' "listeners.tcp.1 = 127.0.0.1:$(envget "CLUSTER_PORT_$1")" \
        'loopback_users = none' 'log.file.level = warning' > "$R/rabbitmq.conf"
    (
        cluster_env "$1"
        "$RABBIT_BIN/rabbitmq-server" -detached > "$R/start.out" 2>&1 || exit 1
        timeout 120 "$RABBIT_BIN/rabbitmqctl" -n "$RABBITMQ_NODENAME" wait "$R/pid" \
            --timeout 110 > "$R/wait.out" 2>&1
    ) || { tail -n 20 "$R/wait.out" "$R"/log/*.log >&2 || true; die "cluster node $1 failed to start"; }
}

cluster_ctl() { # N ARGS...
    local n=$1; shift
    (cluster_env "$n"; exec "$RABBIT_BIN/rabbitmqctl" -q -n "$RABBITMQ_NODENAME" "$@")
}

cluster_start() {
    cluster_stop
    local R=$RUN/rabbit-cluster n ports urls=
    rm -rf "$R"; mkdir -p "$R"
    mapfile -t ports < <(free_ports 6)
    for n in 1 2 3; do
        envset "CLUSTER_NODE_$n" "vncl$n-$$-$RANDOM@localhost"
        envset "CLUSTER_PORT_$n" "${ports[$((n - 1))]}"
        envset "CLUSTER_DIST_$n" "${ports[$((n + 2))]}"
        urls+="${urls:+,}amqp://guest:guest@127.0.0.1:${ports[$((n - 1))]}/"
    done
    envset CLUSTER_URLS "$urls"
    head -c 30 /dev/urandom | base64 | tr -dc 'A-Za-z' > "$R/.erlang.cookie"
    chmod 400 "$R/.erlang.cookie"
    for n in 1 2 3; do cluster_node_start "$n" & done
    wait
    for n in 2 3; do
        cluster_ctl "$n" stop_app > /dev/null
        cluster_ctl "$n" join_cluster "$(envget CLUSTER_NODE_1)" > /dev/null ||
            die "cluster node $n could not join"
        cluster_ctl "$n" start_app > /dev/null
    done
    log "RabbitMQ cluster of 3 up on $urls"
}

cluster_stop() {
    local n pid
    for n in 1 2 3; do
        pid=$(cat "$RUN/rabbit-cluster/n$n/pid" 2> /dev/null) || continue
        kill -9 "$pid" 2> /dev/null || true
        rm -f "$RUN/rabbit-cluster/n$n/pid"
    done
}

# kill -9 of node N's Erlang VM, as a crash or a power loss
cluster_kill() {
    local pid; pid=$(cat "$RUN/rabbit-cluster/n$1/pid")
    kill -9 "$pid"
    rm -f "$RUN/rabbit-cluster/n$1/pid"
    log "cluster node $1 killed (pid $pid)"
}

epmd_stop() {
    local port; port=$(envget RABBIT_EPMD_PORT)
    [ -n "$port" ] || return 0
    ERL_EPMD_PORT=$port timeout 5 epmd -kill >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------- PostgreSQL
as_pg() { runuser -u postgres -- "$@"; }

pg_start() {
    local D=$RUN/postgres
    mkdir -p "$D"; chown postgres: "$D"
    if [ ! -f "$D/data/PG_VERSION" ]; then
        as_pg "$PGBIN/initdb" -D "$D/data" -A trust -U postgres --no-sync -E UTF8 \
            --locale=C.UTF-8 > "$D/initdb.log" 2>&1 ||
            { cat "$D/initdb.log" >&2; die "PostgreSQL initdb failed"; }
        # TLS with a client certificate for user vnssl (the TLS tests); trust for the rest
        sed -i '1i hostssl all vnssl 127.0.0.1/32 cert' "$D/data/pg_hba.conf"
    fi
    install -o postgres -m 0644 "$RUN/pki/server.pem" "$D/server.pem"
    install -o postgres -m 0600 "$RUN/pki/server.key" "$D/server.key"
    as_pg "$PGBIN/pg_ctl" -D "$D/data" -l "$D/pg.log" -w -t 60 -o \
        "-p $(envget PG_PORT) -k $D -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=${PG_MAX_CONNECTIONS:-400} -c full_page_writes=off -c ssl=on -c ssl_cert_file=$D/server.pem -c ssl_key_file=$D/server.key -c ssl_ca_file=$RUN/pki/ca.pem" \
        start > "$D/start.out" 2>&1 ||
        { cat "$D/start.out" >&2; tail -n 20 "$D/pg.log" >&2 || true; die "PostgreSQL failed to start"; }
    log "PostgreSQL up on 127.0.0.1:$(envget PG_PORT)"
}

pg_stop() {
    local D=$RUN/postgres
    [ -f "$D/data/postmaster.pid" ] || return 0
    as_pg "$PGBIN/pg_ctl" -D "$D/data" -m immediate -w -t 30 stop > /dev/null 2>&1 || true
}

# ---------------------------------------------------------------- libvirtd hosts
host_ip() { case $1 in a) echo 127.0.0.2 ;; b) echo 127.0.0.3 ;; *) die "no host '$1'" ;; esac; }

host_start() {
    local H=$1 IP; IP=$(host_ip "$1")
    local R=$RUN/hosts/$H PORT MIG
    PORT=$(envget "HOST_${H^^}_PORT"); MIG=$(envget "HOST_${H^^}_MIGRATION_PORT")
    mkdir -p "$R"/{run,lib,cache,log,etc,private,virtnode} "$RUN/private" /var/lib/virtnode
    cp -rn /etc/libvirt/. "$R/etc/" 2>/dev/null || true
    # a host coming back from host-crash keeps its domain definitions, as a rebooted one does
    if [ -f "$R/crashed" ]; then
        rm -f "$R/crashed"
    else
        rm -f "$R"/etc/qemu/networks/autostart/* "$R"/etc/qemu/*.xml 2>/dev/null || true
    fi
    local last=${IP##*.}
    cat > "$R/etc/libvirtd.conf" <<EOF
listen_tls = 0
listen_tcp = 1
listen_addr = "$IP"
tcp_port = "$PORT"
auth_tcp = "none"
host_uuid = "$(printf '00000000-0000-4000-8000-0000000001%02x' "$last")"
unix_sock_dir = "/run/libvirt"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
keepalive_interval = 5
EOF
    cat > "$R/etc/qemu.conf" <<EOF
migration_address = "$IP"
migration_host = "$IP"
migration_port_min = $MIG
migration_port_max = $((MIG + 15))
user = "root"
group = "root"
dynamic_ownership = 1
remember_owner = 0
stdio_handler = "file"
migrate_tls_x509_cert_dir = "$R/pki-qemu"
migrate_tls_x509_verify = 1
migrate_tls_x509_secret_uuid = "$QEMU_TLS_SECRET"
lock_manager = "lockd"
EOF
    # virtlockd holds each running guest's disk leases (fcntl locks on the disk files):
    # on the shared instance folder, a second QEMU of the same disk, on either host, is
    # refused.  Direct leases, no lockspace folder (qemu-lockd.conf's defaults).
    printf 'log_outputs = "3:file:/var/log/libvirt/virtlockd.log"\n' > "$R/etc/virtlockd.conf"
    # QEMU's migration TLS files (used by migrations with VIR_MIGRATE_TLS only), keys
    # encrypted with the passphrase libvirt holds as a secret (defined below)
    [ -f "$R/pki-qemu/server-cert.pem" ] ||
        "$PY" "$HERE/pki.py" qemu "$RUN/pki" "$R/pki-qemu" "$QEMU_TLS_PASSPHRASE" \
            "$IP" "host-$H" || die "cannot make the QEMU TLS files of host $H"
    rm -f "$R/run/libvirt-sock" "$R/run/libvirt-sock-ro" "$R/run/libvirt-admin-sock"
    unshare --mount --uts --propagation private bash -c "
        hostname host-$H
        mkdir -p /run/libvirt
        mount --bind $R/run   /run/libvirt
        mount --bind $R/lib   /var/lib/libvirt
        mount --bind $R/cache /var/cache/libvirt
        mount --bind $R/log   /var/log/libvirt
        mount --bind $R/etc   /etc/libvirt
        mount --bind $R/private $RUN/private
        mount --bind $R/virtnode /var/lib/virtnode
        virtlockd -d -f /etc/libvirt/virtlockd.conf -p /run/libvirt/virtlockd.pid
        exec libvirtd --listen -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid
    " > "$R/libvirtd.out" 2>&1 &
    local p=$! i
    echo "$p" > "$R/pid"
    for i in $(seq 100); do
        [ -S "$R/run/libvirt-sock" ] && port_open "$IP" "$PORT" && break
        kill -0 "$p" 2>/dev/null || break
        sleep 0.1
    done
    if ! kill -0 "$p" 2>/dev/null || ! wait_port "$IP" "$PORT" 2; then
        tail -n 5 "$R/libvirtd.out" "$R/log/libvirtd.log" >&2 2>/dev/null || true
        die "libvirtd host $H failed to start on $IP:$PORT"
    fi
    readlink "/proc/$p/ns/mnt" > "$R/mntns"
    # warm the QEMU capabilities cache: the first domain start otherwise pays for the probe
    timeout 60 virsh -q -c "qemu+tcp://$IP:$PORT/system" capabilities > /dev/null ||
        die "libvirtd host $H does not answer on $IP:$PORT"
    "$PY" - "qemu+tcp://$IP:$PORT/system" "$QEMU_TLS_SECRET" \
        "$QEMU_TLS_PASSPHRASE" <<'SECRETPY' || die "cannot define the QEMU TLS secret on host $H"
import sys, libvirt
c = libvirt.open(sys.argv[1])
xml = ("<secret ephemeral='no' private='yes'><uuid>%s</uuid><usage type='tls'>"
       "<name>virtnode-migration-tls</name></usage></secret>" % sys.argv[2])
c.secretDefineXML(xml).setValue(sys.argv[3].encode())
SECRETPY
    log "libvirtd host $H up on $IP:$PORT (pid $p)"
}

host_stop() {
    local H=$1 IP; IP=$(host_ip "$1")
    local R=$RUN/hosts/$H PORT p d
    PORT=$(envget "HOST_${H^^}_PORT")
    p=$(cat "$R/pid" 2>/dev/null || true)
    # a pid file from an earlier life may name a recycled pid: only a libvirtd is ours
    [ -n "$p" ] && [ "$(cat "/proc/$p/comm" 2>/dev/null)" != libvirtd ] && p=
    if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
        local uri="qemu+tcp://$IP:$PORT/system"
        for d in $(timeout 10 virsh -q -c "$uri" list --all --name 2>/dev/null); do
            timeout 10 virsh -q -c "$uri" destroy "$d" > /dev/null 2>&1 || true
            timeout 10 virsh -q -c "$uri" undefine --managed-save "$d" > /dev/null 2>&1 || true
        done
        kill "$p" 2>/dev/null || true
        for _ in $(seq 25); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
        # about one libvirtd stop in four hangs in its udev driver shutdown: SIGKILL it
        kill -9 "$p" 2>/dev/null || true
    fi
    # guests whose libvirtd died keep running: kill every process of this host's namespace
    # but the agents, which live on across a libvirtd restart as they do on a real host.
    # Only while this run's namespace is known alive: a namespace's inode number is reused
    # once it is gone, and may then be another run's.
    if [ -n "$p" ] && [ -f "$R/mntns" ]; then
        local ns; ns=$(cat "$R/mntns")
        for d in /proc/[0-9]*; do
            [ "$(readlink "$d/ns/mnt" 2>/dev/null)" = "$ns" ] || continue
            [ "$(cat "$d/comm" 2>/dev/null)" = virtnoded ] && continue
            kill -9 "${d#/proc/}" 2>/dev/null || true
        done
    fi
    rm -f "$R/pid" "$R/run/libvirt-sock" "$R/run/libvirt-sock-ro" "$R/run/libvirt-admin-sock"
}

# Host H dies: libvirtd, virtlockd, its guests' QEMUs and its agents are killed at once,
# nothing is cleaned up (host-start brings it back with its definitions).
host_crash() {
    local H=$1 R=$RUN/hosts/$1 ns d
    [ -f "$R/mntns" ] || die "host $H is not running"
    ns=$(cat "$R/mntns")
    # QEMU runs in a mount namespace of its own: found by the pid files libvirt keeps
    for d in "$R"/run/qemu/*.pid; do
        [ -f "$d" ] && kill -9 "$(cat "$d")" 2>/dev/null
    done
    for d in /proc/[0-9]*; do
        [ "$(readlink "$d/ns/mnt" 2>/dev/null)" = "$ns" ] && kill -9 "${d#/proc/}" 2>/dev/null
    done
    rm -f "$R/pid" "$R/run/libvirt-sock" "$R/run/libvirt-sock-ro" "$R/run/libvirt-admin-sock"
    touch "$R/crashed"
}

# Restarts only libvirtd of host H: its guests (and agents) keep running in the host's
# namespaces, as they do when an operator restarts libvirtd on a real host.
libvirtd_restart() {
    local H=$1 IP; IP=$(host_ip "$1")
    local R=$RUN/hosts/$H PORT p d holder=
    PORT=$(envget "HOST_${H^^}_PORT")
    p=$(cat "$R/pid" 2>/dev/null || true)
    if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
        kill "$p" 2>/dev/null || true
        for _ in $(seq 25); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$p" 2>/dev/null || true
        for _ in $(seq 25); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    fi
    local ns; ns=$(cat "$R/mntns")
    for d in /proc/[0-9]*; do
        [ "$(readlink "$d/ns/mnt" 2>/dev/null)" = "$ns" ] || continue
        holder=${d#/proc/}
        break
    done
    [ -n "$holder" ] || die "nothing runs in host $H's namespace: use host-start"
    rm -f "$R/run/libvirt-sock" "$R/run/libvirt-sock-ro" "$R/run/libvirt-admin-sock"
    nsenter -t "$holder" -m -u -- libvirtd --listen -f /etc/libvirt/libvirtd.conf \
        -p /run/libvirt/libvirtd.pid >> "$R/libvirtd.out" 2>&1 &
    p=$!
    echo "$p" > "$R/pid"
    wait_port "$IP" "$PORT" 30 || die "libvirtd of host $H did not come back"
    log "libvirtd of host $H restarted (pid $p), its guests untouched"
}

host_ns() {
    local H=$1; shift
    local p; p=$(cat "$RUN/hosts/$H/pid" 2>/dev/null) || die "host $H is not running"
    if [ -f "$RUN/hosts/$H/netns" ]; then
        exec nsenter -t "$p" -m -u -n -- "$@"
    fi
    exec nsenter -t "$p" -m -u -- "$@"
}

# ---------------------------------------------------------------- hosts with their own network
# A libvirtd "host" in its own mount, UTS and network namespace (for guest networks: its
# bridges, taps and filters stay in it).  Inside: lo, two veth pairs whose vnphys0 and
# vnphys1 ends stand for physical interfaces (physnet1, physnet2), and on 127.0.0.1 the
# ports of RabbitMQ, PostgreSQL and the image server, forwarded over UNIX sockets to the
# services in the root namespace (socat), so no address outside the namespace is used.
# libvirt is reached over its UNIX socket: HOST_<H>_URI.
nethost_start() {
    local H=$1 R=$RUN/hosts/$1 svc port fwd_in=
    nethost_stop "$H" 2> /dev/null || true
    mkdir -p "$R"/{run,lib,cache,log,etc,virtnode}
    touch "$R/netns"
    cp -rn /etc/libvirt/. "$R/etc/" 2> /dev/null || true
    rm -f "$R"/etc/qemu/networks/autostart/* "$R"/etc/qemu/*.xml 2> /dev/null || true
    printf '%s\n' 'listen_tls = 0' 'listen_tcp = 0' 'unix_sock_dir = "/run/libvirt"' \
        'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"' 'keepalive_interval = 5' \
        > "$R/etc/libvirtd.conf"
    printf '%s\n' 'user = "root"' 'group = "root"' 'dynamic_ownership = 1' 'remember_owner = 0' \
        'stdio_handler = "file"' > "$R/etc/qemu.conf"
    if [ -n "${NETHOST_MIGRATION_ADDRESS:-}" ]; then
        printf '%s\n' "migration_address = \"$NETHOST_MIGRATION_ADDRESS\"" \
            "migration_host = \"$NETHOST_MIGRATION_ADDRESS\"" >> "$R/etc/qemu.conf"
    fi
    # alone, each physical interface is one end of a veth pair inside the host; paired
    # (nethost_pair), the two hosts' interfaces are the ends of one pair
    local veths='for i in 0 1; do
            ip link add vnphys$i type veth peer name vnpeer$i
            ip link set vnpeer$i up
            ip link set vnphys$i up
        done'
    [ -n "${NETHOST_PEERED:-}" ] && veths=:
    forwarders "$R"; fwd_in=$FWD_IN
    rm -f "$R/run/libvirt-sock" "$R/run/libvirt-sock-ro" "$R/run/libvirt-admin-sock"
    unshare --mount --uts --net --propagation private bash -c "
        set -e
        hostname host-$H
        ip link set lo up
        $veths
        mkdir -p /run/libvirt /var/lib/virtnode
        mount --bind $R/run   /run/libvirt
        mount --bind $R/lib   /var/lib/libvirt
        mount --bind $R/cache /var/cache/libvirt
        mount --bind $R/log   /var/log/libvirt
        mount --bind $R/etc   /etc/libvirt
        mount --bind $R/virtnode /var/lib/virtnode
        $fwd_in
        exec libvirtd -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid
    " > "$R/libvirtd.out" 2>&1 &
    local p=$! i
    echo "$p" > "$R/pid"
    for i in $(seq 100); do
        [ -S "$R/run/libvirt-sock" ] && break
        kill -0 "$p" 2> /dev/null || break
        sleep 0.1
    done
    [ -S "$R/run/libvirt-sock" ] || { tail -n 5 "$R/libvirtd.out" >&2; die "libvirtd host $H failed"; }
    readlink "/proc/$p/ns/mnt" > "$R/mntns"
    local uri="qemu+unix:///system?socket=$R/run/libvirt-sock"
    envset "HOST_${H^^}_URI" "$uri"
    timeout 60 virsh -q -c "$uri" capabilities > /dev/null || die "libvirtd host $H does not answer"
    log "libvirtd host $H up in a network namespace of its own (pid $p)"
}

# Two hosts "na" and "nb" as one fabric: their physical interfaces (vnphys0, vnphys1) are
# the two ends of veth pairs, so a network's bridges on both hosts share its layer 2 (as
# hosts on one switch), and a link "vnmig" carries live migrations between them on
# 203.0.113.1 (na) and 203.0.113.2 (nb), a documentation range that exists only inside
# the two namespaces.  libvirt's control connection goes over the UNIX sockets.
nethost_pair() {
    local i ha hb
    NETHOST_MIGRATION_ADDRESS=203.0.113.1 NETHOST_PEERED=1 nethost_start na
    NETHOST_MIGRATION_ADDRESS=203.0.113.2 NETHOST_PEERED=1 nethost_start nb
    ha=$(cat "$RUN/hosts/na/pid"); hb=$(cat "$RUN/hosts/nb/pid")
    for i in 0 1; do
        ip link add "vnx${i}a" type veth peer name "vnx${i}b"
        ip link set "vnx${i}a" netns "$ha"
        ip link set "vnx${i}b" netns "$hb"
        nsenter -t "$ha" -n ip link set "vnx${i}a" name "vnphys$i"
        nsenter -t "$hb" -n ip link set "vnx${i}b" name "vnphys$i"
        nsenter -t "$ha" -n ip link set "vnphys$i" up
        nsenter -t "$hb" -n ip link set "vnphys$i" up
    done
    ip link add vnmiga type veth peer name vnmigb
    ip link set vnmiga netns "$ha"
    ip link set vnmigb netns "$hb"
    nsenter -t "$ha" -n sh -c 'ip link set vnmiga name vnmig && ip addr add 203.0.113.1/24 dev vnmig && ip link set vnmig up'
    nsenter -t "$hb" -n sh -c 'ip link set vnmigb name vnmig && ip addr add 203.0.113.2/24 dev vnmig && ip link set vnmig up'
    log "hosts na and nb share physnet1, physnet2 and a migration link"
}

# The root namespace's ends of the forwarders of RabbitMQ, PostgreSQL and the image server
# for a host in its own network namespace; FWD_IN holds the commands that start the ends
# inside it (127.0.0.1:<same port>).
forwarders() {
    local R=$1 svc port
    FWD_IN=
    for svc in AMQP PG IMAGE; do
        port=$(envget "${svc}_PORT")
        rm -f "$R/fwd-$svc.sock"
        socat "UNIX-LISTEN:$R/fwd-$svc.sock,fork,unlink-early" "TCP:127.0.0.1:$port" \
            > /dev/null 2>&1 &
        echo $! >> "$R/forwarders"
        FWD_IN+="socat TCP-LISTEN:$port,bind=127.0.0.1,fork,reuseaddr UNIX-CONNECT:$R/fwd-$svc.sock > /dev/null 2>&1 &
"
    done
}

nethost_stop() {
    local H=$1 R=$RUN/hosts/$1 p d
    [ -f "$R/pid" ] || return 0
    p=$(cat "$R/pid")
    local uri="qemu+unix:///system?socket=$R/run/libvirt-sock"
    if [ "$(cat "/proc/$p/comm" 2> /dev/null)" = libvirtd ]; then
        for d in $(timeout 10 virsh -q -c "$uri" list --all --name 2> /dev/null); do
            timeout 10 virsh -q -c "$uri" destroy "$d" > /dev/null 2>&1 || true
            timeout 10 virsh -q -c "$uri" undefine --managed-save "$d" > /dev/null 2>&1 || true
        done
        kill "$p" 2> /dev/null || true
        for _ in $(seq 25); do kill -0 "$p" 2> /dev/null || break; sleep 0.2; done
        kill -9 "$p" 2> /dev/null || true
    fi
    if [ -f "$R/mntns" ]; then # the pid file says this run's namespace lived
        local ns; ns=$(cat "$R/mntns")
        for d in /proc/[0-9]*; do
            [ "$(readlink "$d/ns/mnt" 2> /dev/null)" = "$ns" ] || continue
            kill -9 "${d#/proc/}" 2> /dev/null || true
        done
    fi
    [ -f "$R/forwarders" ] && xargs -r kill < "$R/forwarders" 2> /dev/null || true
    rm -f "$R/pid" "$R/mntns" "$R/forwarders" "$R"/fwd-*.sock "$R/run/libvirt-sock" \
        "$R/run/libvirt-sock-ro" "$R/run/libvirt-admin-sock"
}


# ---------------------------------------------------------------- fleet hosts
# Two bare machines for deployment tests, fleet-1 and fleet-2: nothing of virtnode or of
# libvirt runs on them until Ansible puts it there.  Each is a mount, UTS and network
# namespace whose root is an overlay of this machine's root with its writes on a tmpfs
# (what the role installs and starts stays inside), joined to the other by one veth pair
# (mig0: 198.51.100.1 and .2, named in each /etc/hosts).  Its firewall accepts only
# loopback and answers (INPUT policy DROP), as a locked-down host's would.  RabbitMQ,
# PostgreSQL and the image server are on its 127.0.0.1 through forwarders, as on the
# nethosts.  sshd listens on its 127.0.0.1:22; ssh gets there through
#   ProxyCommand=nsenter --net=/proc/<FLEET_n_PID>/ns/net socat STDIO TCP:127.0.0.1:22
# with the key FLEET_SSH_KEY (root).
fleet_start() {
    local F=$RUN/fleet n p
    fleet_stop 2> /dev/null || true
    mkdir -p "$F"
    rm -f "$F/id_ed25519" "$F/id_ed25519.pub"
    ssh-keygen -q -t ed25519 -N '' -C fleet -f "$F/id_ed25519"
    for n in 1 2; do
        local R=$F/fleet-$n
        rm -rf "$R"; mkdir -p "$R/rw" "$R/root"
        forwarders "$R"
        unshare --mount --uts --net --propagation private bash -c "
            set -e
            mount -t tmpfs -o mode=0755 fleet-$n $R/rw
            mkdir $R/rw/upper $R/rw/work
            mount -t overlay fleet-$n -o lowerdir=/,upperdir=$R/rw/upper,workdir=$R/rw/work $R/root
            mount --rbind /dev $R/root/dev
            mount -t proc proc $R/root/proc
            mount --rbind /sys $R/root/sys
            mount -t tmpfs -o mode=0755 tmpfs $R/root/run
            mount -t tmpfs -o mode=1777 tmpfs $R/root/tmp
            hostname fleet-$n
            echo fleet-$n > $R/root/etc/hostname
            printf '127.0.0.1 localhost\n198.51.100.1 fleet-1\n198.51.100.2 fleet-2\n' > $R/root/etc/hosts
            ip link set lo up
            iptables -P INPUT DROP
            iptables -A INPUT -i lo -j ACCEPT
            iptables -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
            # a fresh machine: no libvirt network of its own, no earlier state
            rm -f $R/root/etc/libvirt/qemu/networks/autostart/*
            rm -rf $R/root/var/lib/virtnode $R/root/etc/virtnode $R/root/var/log/virtnode
            mkdir -p -m 0700 $R/root/root/.ssh $R/root/run/sshd
            cp $F/id_ed25519.pub $R/root/root/.ssh/authorized_keys
            rm -f $R/root/etc/ssh/ssh_host_*
            chroot $R/root ssh-keygen -q -A
            $FWD_IN
            exec chroot $R/root /usr/sbin/sshd -D -e -o ListenAddress=127.0.0.1 \
                -o PidFile=/run/sshd.pid -o UseDNS=no
        " > "$R/sshd.out" 2>&1 &
        echo $! > "$R/pid"
        readlink "/proc/$!/ns/net" > "$R/netns" || true
    done
    local p1 p2
    p1=$(cat "$F/fleet-1/pid"); p2=$(cat "$F/fleet-2/pid")
    for n in 1 2; do
        p=$(cat "$F/fleet-$n/pid")
        for _ in $(seq 100); do
            [ "$(cat "/proc/$p/comm" 2> /dev/null)" = sshd ] && break
            kill -0 "$p" 2> /dev/null || break
            sleep 0.1
        done
        [ "$(cat "/proc/$p/comm" 2> /dev/null)" = sshd ] ||
            { cat "$F/fleet-$n/sshd.out" >&2; die "fleet host $n failed to start"; }
        readlink "/proc/$p/ns/net" > "$F/fleet-$n/netns"
        readlink "/proc/$p/ns/mnt" > "$F/fleet-$n/mntns"
    done
    ip link add vnfl1 netns "$p1" type veth peer name vnfl2 netns "$p2"
    nsenter -t "$p1" -n sh -c 'ip link set vnfl1 name mig0 && ip addr add 198.51.100.1/24 dev mig0 && ip link set mig0 up'
    nsenter -t "$p2" -n sh -c 'ip link set vnfl2 name mig0 && ip addr add 198.51.100.2/24 dev mig0 && ip link set mig0 up'
    for n in 1 2; do
        p=$(cat "$F/fleet-$n/pid")
        for _ in $(seq 50); do
            nsenter -t "$p" -n bash -c '</dev/tcp/127.0.0.1/22' 2> /dev/null && break
            sleep 0.1
        done
        envset "FLEET_${n}_PID" "$p"
    done
    envset FLEET_SSH_KEY "$F/id_ed25519"
    log "fleet hosts up (sshd pids $p1 $p2)"
}

fleet_stop() {
    local F=$RUN/fleet n d
    for n in 1 2; do
        local R=$F/fleet-$n
        [ -f "$R/pid" ] || continue
        # everything of the machine: its namespaces' processes (guests included)
        for d in /proc/[0-9]*; do
            if [ "$(readlink "$d/ns/net" 2> /dev/null)" = "$(cat "$R/netns" 2> /dev/null)" ] ||
                [ "$(readlink "$d/ns/mnt" 2> /dev/null)" = "$(cat "$R/mntns" 2> /dev/null)" ]; then
                kill -9 "${d#/proc/}" 2> /dev/null || true
            fi
        done
        [ -f "$R/forwarders" ] && xargs -r kill < "$R/forwarders" 2> /dev/null || true
        rm -f "$R/pid" "$R/netns" "$R/mntns" "$R/forwarders" "$R"/fwd-*.sock
    done
}

# ---------------------------------------------------------------- NAS and iSCSI storage
# nfs-ganesha (with rpcbind: QEMU's libnfs looks mountd up through the portmapper) and
# tgtd inside host H's network namespace, on its loopback only:
#   NFS   <H>:/ = $R/nas/export (NFS v3 and v4, no root squash)
#   iSCSI target $STORAGE_IQN, CHAP $STORAGE_CHAP_USER / $STORAGE_CHAP_PASSWORD, on two
#         portals 127.0.0.1:3260 and 127.0.0.2:3260 (one LUN, two paths), LUN 1..4 files
#         of $R/nas/lunN.img (64 MiB each)
# On a paired host (nethost_pair) both also answer on its migration address 203.0.113.1,
# which the other host reaches.
# One storage host per machine: rpcbind's and tgtd's control sockets are global paths.
storage_start() {
    local H=$1 R=$RUN/hosts/$1 p i
    p=$(cat "$R/pid" 2>/dev/null) || die "host $H is not running"
    [ -f "$R/netns" ] || die "host $H has no network namespace of its own"
    storage_stop "$H" 2> /dev/null || true
    mkdir -p "$R/nas"/{export,recov,run} /var/run/ganesha
    chmod 0777 "$R/nas/export"
    local X="nsenter -t $p -n"
    $X rpcbind -w -f > "$R/nas/rpcbind.out" 2>&1 &
    echo $! > "$R/nas/rpcbind.pid"
    for i in $(seq 50); do $X ss -ltn | grep -q ':111 ' && break; sleep 0.1; done
    cat > "$R/nas/ganesha.conf" << GANESHA
NFS_CORE_PARAM { Protocols = 3, 4; NFS_Port = 2049; MNT_Port = 20048;
                 Enable_NLM = false; Enable_RQUOTA = false; }
NFSV4 { Graceless = true; RecoveryBackend = fs; RecoveryRoot = $R/nas/recov; }
NFS_KRB5 { Active_krb5 = false; }
EXPORT_DEFAULTS { Squash = No_Root_Squash; SecType = sys; }
EXPORT { Export_Id = 1; Path = $R/nas/export; Pseudo = /export; Access_Type = RW;
         Protocols = 3, 4; Transports = TCP; Squash = No_Root_Squash; FSAL { Name = VFS; } }
LOG { Default_Log_Level = EVENT; }
GANESHA
    $X ganesha.nfsd -F -f "$R/nas/ganesha.conf" -L "$R/nas/ganesha.log" \
        -p "$R/nas/run/ganesha.pid" > "$R/nas/ganesha.out" 2>&1 &
    echo $! > "$R/nas/ganesha.fpid"
    for i in 1 2 3 4; do [ -f "$R/nas/lun$i.img" ] || truncate -s 64M "$R/nas/lun$i.img"; done
    $X tgtd -f --iscsi portal=127.0.0.1:3260 > "$R/nas/tgtd.out" 2>&1 &
    echo $! > "$R/nas/tgtd.pid"
    for i in $(seq 50); do tgtadm --lld iscsi --op show --mode sys > /dev/null 2>&1 && break; sleep 0.1; done
    local iqn=iqn.2026-11.org.virtnode.test:storage
    tgtadm --lld iscsi --op new --mode portal --param portal=127.0.0.2:3260
    # a paired host (nethost_pair) reaches them over the migration link
    if $X ip -4 addr show dev vnmig 2> /dev/null | grep -q 203.0.113.1; then
        tgtadm --lld iscsi --op new --mode portal --param portal=203.0.113.1:3260
    fi
    tgtadm --lld iscsi --op new --mode target --tid 1 -T "$iqn"
    for i in 1 2 3 4; do
        tgtadm --lld iscsi --op new --mode logicalunit --tid 1 --lun $i -b "$R/nas/lun$i.img"
        tgtadm --lld iscsi --op update --mode logicalunit --tid 1 --lun $i \
            --params scsi_id=VNTEST000$i,scsi_sn=VNSN000$i
    done
    tgtadm --lld iscsi --op new --mode account --user vnchap --password vnchap-secret-2f9c
    tgtadm --lld iscsi --op bind --mode account --tid 1 --user vnchap
    tgtadm --lld iscsi --op bind --mode target --tid 1 -I ALL
    for i in $(seq 100); do $X ss -ltn | grep -q ':2049 ' && break; sleep 0.1; done
    $X ss -ltn | grep -q ':2049 ' || { tail -n 5 "$R/nas/ganesha.log" >&2; die "ganesha did not start in host $H"; }
    envset STORAGE_HOST "$H"
    envset STORAGE_EXPORT_DIR "$R/nas/export"
    envset STORAGE_LUN_DIR "$R/nas"
    envset STORAGE_IQN "$iqn"
    envset STORAGE_CHAP_USER vnchap
    envset STORAGE_CHAP_PASSWORD vnchap-secret-2f9c
    log "NFS and iSCSI servers up in host $H (ganesha $(cat "$R/nas/ganesha.fpid"), tgtd $(cat "$R/nas/tgtd.pid"))"
}

# Takes the NFS server away (and back with storage-nfs-start): for the failure tests.
storage_nfs_stop() {
    local R=$RUN/hosts/$1 p
    p=$(cat "$R/nas/ganesha.fpid" 2>/dev/null) || return 0
    kill -STOP "$p" 2>/dev/null || true
}
storage_nfs_cont() {
    local R=$RUN/hosts/$1 p
    p=$(cat "$R/nas/ganesha.fpid" 2>/dev/null) || return 0
    kill -CONT "$p" 2>/dev/null || true
}

storage_stop() {
    local H=$1 R=$RUN/hosts/$1 f p
    # tgtd ignores SIGTERM while targets exist: offline, delete, then the system
    if tgtadm --op show --mode sys > /dev/null 2>&1; then
        tgtadm --op update --mode sys --name State -v offline || true
        tgt-admin --offline ALL > /dev/null 2>&1 || true
        tgt-admin --update ALL -c /dev/null -f > /dev/null 2>&1 || true
        tgtadm --op delete --mode system > /dev/null 2>&1 || true
    fi
    for f in ganesha.fpid tgtd.pid rpcbind.pid; do
        p=$(cat "$R/nas/$f" 2>/dev/null) || continue
        kill -CONT "$p" 2>/dev/null || true
        kill "$p" 2>/dev/null || true
        for _ in $(seq 30); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
        rm -f "$R/nas/$f"
    done
    rm -f /run/rpcbind.sock /run/rpcbind.lock
}

# ---------------------------------------------------------------- image server
images_start() {
    mkdir -p "$RUN/images"
    "$PY" "$HERE/imageserver.py" --port "$(envget IMAGE_PORT)" --root "$RUN/images" \
        > "$RUN/imageserver.log" 2>&1 &
    echo $! > "$RUN/imageserver.pid"
    wait_port 127.0.0.1 "$(envget IMAGE_PORT)" 10 ||
        { cat "$RUN/imageserver.log" >&2; die "image server failed to start"; }
    log "image server up on 127.0.0.1:$(envget IMAGE_PORT)"
}

# ---------------------------------------------------------------- whole run
kill_run_processes() { # every process whose command line names this run's folder
    local d self=$$
    for d in /proc/[0-9]*; do
        local pid=${d#/proc/}
        [ "$pid" = "$self" ] && continue
        tr '\0' ' ' < "$d/cmdline" 2>/dev/null | grep -qF -- "$RUN/" || continue
        case "$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null)" in *harness.sh*) continue ;; esac
        # the databases and the broker are stopped in order below
        case "$(cat "$d/comm" 2>/dev/null)" in postgres | beam.smp | erl_child_setup | epmd) continue ;; esac
        kill -9 "$pid" 2>/dev/null || true
    done
}

stop_all() {
    [ -f "$ENVF" ] || return 0
    kill_run_processes
    host_stop a || true
    host_stop b || true
    for h in na nb; do [ -d "$RUN/hosts/$h/nas" ] && storage_stop "$h"; done 2> /dev/null || true
    nethost_stop na || true
    nethost_stop nb || true
    fleet_stop || true
    rabbit_stop || true
    cluster_stop || true
    epmd_stop || true
    pg_stop || true
    [ -f "$RUN/imageserver.pid" ] && kill "$(cat "$RUN/imageserver.pid")" 2>/dev/null || true
    rm -f "$RUN/imageserver.pid"
    log "all services of $RUN stopped"
}

start_all() {
    stop_all
    rm -rf "$RUN"/{rabbitmq,postgres,hosts,private,images,shared,agents,pki}
    rm -f "$ENVF"
    mkdir -p "$RUN"
    chmod 755 "$RUN"
    local ports; mapfile -t ports < <(free_ports 8)
    envset RUN_DIR "$RUN"
    envset SRC_DIR "$SRC"
    envset RABBIT_NODE "vntest-$$-$RANDOM@localhost"
    envset AMQP_PORT "${ports[0]}"
    envset RABBIT_DIST_PORT "${ports[1]}"
    envset RABBIT_EPMD_PORT "${ports[2]}"
    envset AMQP_URL "amqp://guest:guest@127.0.0.1:${ports[0]}/"
    # TLS: amqps://localhost:AMQPS_PORT/ and PostgreSQL's sslmode, with the certificates of
    # tests/lib/pki.py in PKI_DIR (the server's name is localhost only)
    envset AMQPS_PORT "${ports[7]}"
    envset PKI_DIR "$RUN/pki"
    rm -rf "$RUN/pki"
    "$PY" "$HERE/pki.py" "$RUN/pki" || die "making the test certificates failed"
    envset PG_PORT "${ports[3]}"
    envset PG_DSN "host=127.0.0.1 port=${ports[3]} user=postgres dbname=postgres"
    envset HOST_A_PORT "${ports[4]}"
    envset HOST_B_PORT "${ports[5]}"
    envset HOST_A_URI "qemu+tcp://127.0.0.2:${ports[4]}/system"
    envset HOST_B_URI "qemu+tcp://127.0.0.3:${ports[5]}/system"
    # migration port ranges: 16 ports each, out of the ranges client sockets and
    # free_ports draw from
    local base; base=$("$PY" "$HERE/ports.py" --block 32) || die "no free migration ports"
    envset HOST_A_MIGRATION_PORT "$base"
    envset HOST_B_MIGRATION_PORT "$((base + 16))"
    envset IMAGE_PORT "${ports[6]}"
    envset IMAGE_URL "http://127.0.0.1:${ports[6]}"
    envset SHARED_DIR "$RUN/shared"
    envset PRIVATE_DIR "$RUN/private"
    mkdir -p "$RUN/shared" "$RUN/private" "$RUN/agents"

    local guest
    guest=$(bash "$SRC/tests/guest/build.sh" | tail -n 1) || die "test guest image build failed"
    envset GUEST_IMAGE "$guest"

    # RabbitMQ takes ~10 s: start it in the background while the rest comes up
    rabbit_start & local rpid=$!
    pg_start
    host_start a
    host_start b
    images_start
    wait "$rpid" || die "RabbitMQ failed to start"
    log "services ready; environment in $ENVF"
}

case "$cmd" in
start) start_all ;;
stop) stop_all ;;
rabbit-stop) rabbit_stop; log "RabbitMQ stopped" ;;
rabbit-start) rabbit_start ;;
pg-stop) pg_stop; log "PostgreSQL stopped" ;;
pg-start) pg_start ;;
host-stop) host_stop "${3:?host}"; log "host $3 stopped" ;;
host-start) host_start "${3:?host}" ;;
host-crash) host_crash "${3:?host}"; log "host $3 crashed" ;;
qemu-tls-passphrase) echo "$QEMU_TLS_PASSPHRASE" ;;
libvirtd-restart) libvirtd_restart "${3:?host}" ;;
nethost-start) nethost_start "${3:?host}" ;;
nethost-stop) nethost_stop "${3:?host}"; log "host $3 stopped" ;;
nethost-pair) nethost_pair ;;
cluster-start) cluster_start ;;
cluster-stop) cluster_stop; log "RabbitMQ cluster stopped" ;;
cluster-kill) cluster_kill "${3:?node}" ;;
cluster-node-start) cluster_node_start "${3:?node}" ;;
cluster-ctl) N=${3:?node}; shift 3; cluster_ctl "$N" "$@" ;;
rabbitmqctl) shift 2; (rabbit_env; exec "$RABBIT_BIN/rabbitmqctl" -q -n "$RABBITMQ_NODENAME" "$@") ;;
fleet-start) fleet_start ;;
fleet-stop) fleet_stop; log "fleet hosts stopped" ;;
storage-start) storage_start "${3:?host}" ;;
storage-stop) storage_stop "${3:?host}"; log "storage of host $3 stopped" ;;
storage-nfs-stop) storage_nfs_stop "${3:?host}" ;;
storage-nfs-cont) storage_nfs_cont "${3:?host}" ;;
ns) H=${3:?host}; shift 3; host_ns "$H" "$@" ;;
*) die "unknown command '$cmd'" ;;
esac
