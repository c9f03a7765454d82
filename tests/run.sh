#!/bin/bash
# tests/run.sh - builds virtnode and runs all its tests: the unit tests, then the
# integration tests against real RabbitMQ, PostgreSQL and libvirtd hosts running real QEMU
# guests, which the ctest fixture starts and stops (tests/lib/harness.sh).
#
#   tests/run.sh [--sanitize] [--no-install] [-- CTEST_ARGS...]
#
#   --sanitize    an AddressSanitizer + UndefinedBehaviorSanitizer build (build-asan/)
#   --no-install  do not run deploy/install-deps.sh first
#   CTEST_ARGS    e.g. -L unit, or -R integration/03
#
# BUILD overrides the build folder (default build/, or build-asan/ with --sanitize).
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
sanitize=0 install=1
while [ $# -gt 0 ]; do
    case $1 in
    --sanitize) sanitize=1 ;;
    --no-install) install=0 ;;
    --) shift; break ;;
    *) echo "usage: $0 [--sanitize] [--no-install] [-- CTEST_ARGS...]" >&2; exit 2 ;;
    esac
    shift
done

if [ $sanitize = 1 ]; then
    BUILD=${BUILD:-$SRC/build-asan}
    CMAKE_ARGS=(-DVIRTNODE_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug)
    # leaks are checked by valgrind on the unit tests (.ci/run); at the daemon's exit
    # LeakSanitizer would also report what libvirt and GLib keep for the process's life
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:strict_string_checks=1}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
else
    BUILD=${BUILD:-$SRC/build}
    CMAKE_ARGS=(-DCMAKE_BUILD_TYPE=RelWithDebInfo)
fi

[ $install = 1 ] && bash "$SRC/deploy/install-deps.sh"

cmake -S "$SRC" -B "$BUILD" "${CMAKE_ARGS[@]}"
cmake --build "$BUILD" -j"$(nproc)"

# the fixture stops the services after the last test; this covers an interrupted run
trap 'bash "$SRC/tests/lib/harness.sh" stop "$BUILD/test-run" > /dev/null 2>&1 || true' EXIT INT TERM
if [ $# -gt 0 ]; then
    ctest --test-dir "$BUILD" --output-on-failure "$@"
else
    # unit tests side by side; integration tests one at a time (they share the services,
    # and their guests' timing must not depend on what else the machine runs)
    ctest --test-dir "$BUILD" --output-on-failure -j"$(nproc)" -L unit
    ctest --test-dir "$BUILD" --output-on-failure -L integration
    # fault injection: the broker, the database, libvirtd or the agent fail mid-work
    ctest --test-dir "$BUILD" --output-on-failure -L faults
    # the daemon under valgrind (valgrind cannot run sanitized binaries)
    [ $sanitize = 1 ] || ctest --test-dir "$BUILD" --output-on-failure -L valgrind
fi
