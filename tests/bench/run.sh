#!/bin/bash
# tests/bench/run.sh - runs virtnode's benchmarks against real services.
#
#   tests/bench/run.sh [rpc|build|agent|heap|report|migration|coldmig|net|volumes|cell|all]...
#
# (default: all but cell, the simulated 1,000-host cell, which takes about 15 minutes and
# about 10 GiB of memory; "all" includes it)
#
# Builds first (build/, or $BUILD), starts a harness run of its own (RabbitMQ, PostgreSQL,
# two libvirtd hosts, the image server) in $BUILD/bench-run and stops it at the end, unless
# VN_TEST_ENV names the env file of a run already up.  Each benchmark prints a table; with
# BENCH_JSON=1 one JSON line each.  docs/benchmarks.md explains what each one measures.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${BUILD:-$SRC/build}
PY=/usr/bin/python3
JSON=${BENCH_JSON:+--json}
which=("$@")
[ ${#which[@]} -gt 0 ] || which=(rpc build agent heap report migration coldmig net volumes)
[ "${which[*]}" = all ] && which=(rpc build agent heap report migration coldmig net volumes cell)

for b in "${which[@]}"; do
    case $b in rpc | build | agent | heap | report | migration | coldmig | net | volumes | cell) ;; *) echo "unknown benchmark: $b" >&2; exit 2 ;; esac
done

cmake -S "$SRC" -B "$BUILD" > /dev/null
cmake --build "$BUILD" -j"$(nproc)" > /dev/null

if [ -z "${VN_TEST_ENV:-}" ]; then
    RUN=$BUILD/bench-run
    trap 'bash "$SRC/tests/lib/harness.sh" stop "$RUN" || true' EXIT
    bash "$SRC/tests/lib/harness.sh" start "$RUN"
    export VN_TEST_ENV=$RUN/env
fi
envget() { sed -n "s/^$1='\(.*\)'$/\1/p" "$VN_TEST_ENV" | tail -n 1; }
export VN_TEST_BIN=$BUILD/bin PYTHONPATH=$SRC/tests/lib:$SRC/tests/bench PYTHONDONTWRITEBYTECODE=1
AMQP_URL=$(envget AMQP_URL)
PG_DSN=$(envget PG_DSN)
RUN=$(envget RUN_DIR)

# An agent on libvirt's test driver, without a database: the RPC benchmark measures the
# message path only.
rpc_agent() {
    local dir=$RUN/agents/bench-rpc
    rm -rf "$dir"
    mkdir -p "$dir"
    cat > "$dir/virtnode.conf" << EOF
[DEFAULT]
host = bench-rpc
state_path = $dir/state
instances_path = $dir/instances
log_level = warning
[amqp]
transport_url = $AMQP_URL
[database]
connection =
[libvirt]
uri = test:///default
require_confinement = false
[api]
listen =
EOF
    "$BUILD/bin/virtnoded" --config "$dir/virtnode.conf" > "$dir/virtnoded.log" 2>&1 &
    echo $! > "$dir/pid"
    for _ in $(seq 100); do
        "$BUILD/bin/virtnodectl" --url "$AMQP_URL" -t 2 ping bench-rpc > /dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "the benchmark agent did not answer; its log:" >&2
    cat "$dir/virtnoded.log" >&2
    return 1
}

for b in "${which[@]}"; do
    echo "== $b"
    case $b in
    rpc)
        rpc_agent
        # the scale curve: 1, 8, 32 and 128 concurrent clients, each with its own connection
        rounds=${BENCH_RPC_ROUNDS:-10}
        for c in ${BENCH_RPC_CLIENTS:-1 8 32 128}; do
            "$BUILD/bin/bench_rpc" --url "$AMQP_URL" --host bench-rpc \
                --agent-pid "$(cat "$RUN/agents/bench-rpc/pid")" -c "$c" \
                -n "$(case $c in 1) echo $((rounds * 800)) ;; 8) echo $((rounds * 1600)) ;; *) echo $((rounds * c * 40)) ;; esac)" \
                --rounds "$rounds" $JSON
        done
        kill "$(cat "$RUN/agents/bench-rpc/pid")"
        wait "$(cat "$RUN/agents/bench-rpc/pid")" 2> /dev/null || true
        ;;
    build) (cd "$SRC/tests/bench" && $PY -W ignore bench_build.py $JSON) ;;
    agent) (cd "$SRC/tests/bench" && $PY -W ignore bench_agent.py $JSON) ;;
    heap) (cd "$SRC/tests/bench" && $PY -W ignore bench_heap.py --guests "${BENCH_HEAP_GUESTS:-200}" $JSON) ;;
    report) "$BUILD/bin/bench_report" --dsn "$PG_DSN" -n "${BENCH_AGENTS:-200}" \
        --seconds "${BENCH_SECONDS:-120}" $JSON ;;
    migration) (cd "$SRC/tests/bench" && $PY -W ignore bench_migration.py $JSON) ;;
    coldmig) (cd "$SRC/tests/bench" && $PY -W ignore bench_coldmig.py --rounds "${BENCH_ROUNDS_COLDMIG:-5}" $JSON) ;;
    net) BENCH_JSON=${BENCH_JSON:-} "$BUILD/bin/bench_net" "${BENCH_ROUNDS:-200}" ;;
    volumes) (cd "$SRC/tests/bench" && $PY -W ignore bench_volumes.py --rounds "${BENCH_ROUNDS_VOLUMES:-5}" $JSON) ;;
    cell) (cd "$SRC/tests/bench" && $PY -W ignore bench_cell.py --hosts "${BENCH_CELL_HOSTS:-1000}" $JSON) ;;
    esac
done
