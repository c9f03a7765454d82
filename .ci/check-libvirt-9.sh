#!/bin/bash
# .ci/check-libvirt-9.sh - builds the daemon against Debian 12's own libvirt 9.0 (headers
# and library, unpacked from bookworm's packages, not installed) so that the code keeps to
# APIs that exist there while tests run with libvirt 11 from bookworm-backports.
#   .ci/check-libvirt-9.sh SRC_DIR WORK_DIR
set -euo pipefail
SRC=$1 WORK=$2
VERSION=$(apt-cache madison libvirt-dev | awk '$3 ~ /^9\.0\./ { print $3; exit }')
[ -n "$VERSION" ] || { echo "check-libvirt-9: no libvirt-dev 9.0 in the archive" >&2; exit 1; }
rm -rf "$WORK"
mkdir -p "$WORK/debs"
(cd "$WORK/debs" && apt-get download "libvirt-dev=$VERSION" "libvirt0=$VERSION" 2>&1 | grep -v "unsandboxed" || true)
for d in "$WORK"/debs/*.deb; do dpkg-deb -x "$d" "$WORK/root"; done
PC=$WORK/root/usr/lib/x86_64-linux-gnu/pkgconfig
sed -i "s|^prefix=.*|prefix=$WORK/root/usr|; s|^exec_prefix=.*|exec_prefix=\${prefix}|;
        s|^libdir=.*|libdir=\${prefix}/lib/x86_64-linux-gnu|; s|^includedir=.*|includedir=\${prefix}/include|" \
    "$PC/libvirt.pc"
# --allow-shlib-undefined: libvirt 9.0's own dependencies (e.g. libyajl) are not installed;
# what matters is that every symbol virtnode takes from libvirt exists in 9.0
PKG_CONFIG_PATH=$PC cmake -S "$SRC" -B "$WORK/build" -DVIRTNODE_TESTS=OFF \
    -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined > /dev/null
grep -q "LIBVIRT_VERSION:INTERNAL=9\.0" "$WORK/build/CMakeCache.txt" ||
    { echo "check-libvirt-9: CMake did not pick libvirt 9.0" >&2; exit 1; }
cmake --build "$WORK/build" -j"$(nproc)"
echo "check-libvirt-9: virtnoded builds and links against libvirt $VERSION"
