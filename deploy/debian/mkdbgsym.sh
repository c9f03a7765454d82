#!/bin/bash
# deploy/debian/mkdbgsym.sh BIN_DIR OUT_DIR VERSION MAINTAINER
# The debugging symbols of the packaged (stripped) binaries as Debian ships them: a
# virtnode-dbgsym .ddeb holding /usr/lib/debug/.build-id/xx/yyyy.debug for each, found by
# the build id the stripped binary keeps.
set -euo pipefail
bin=$1 out=$2 version=$3 maintainer=$4
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
ids=()
for b in virtnoded virtnodectl; do
    id=$(readelf -n "$bin/$b" | sed -n 's/^ *Build ID: \([0-9a-f]*\)$/\1/p')
    [ -n "$id" ] || { echo "mkdbgsym: $bin/$b has no build id" >&2; exit 1; }
    ids+=("$id")
    mkdir -p "$stage/usr/lib/debug/.build-id/${id:0:2}"
    objcopy --only-keep-debug --compress-debug-sections "$bin/$b" \
        "$stage/usr/lib/debug/.build-id/${id:0:2}/${id:2}.debug"
    chmod 0644 "$stage/usr/lib/debug/.build-id/${id:0:2}/${id:2}.debug"
done
mkdir -p "$stage/usr/share/doc" "$stage/DEBIAN"
ln -s virtnode "$stage/usr/share/doc/virtnode-dbgsym"
(cd "$stage" && find usr -type f -printf '%P\n' | sort | sed 's|^|usr/|' | xargs md5sum) \
    > "$stage/DEBIAN/md5sums"
cat > "$stage/DEBIAN/control" << CONTROL
Package: virtnode-dbgsym
Source: virtnode
Version: $version
Auto-Built-Package: debug-symbols
Architecture: amd64
Maintainer: $maintainer
Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)
Depends: virtnode (= $version)
Section: debug
Priority: optional
Build-Ids: ${ids[*]}
Description: debug symbols for virtnode
CONTROL
find "$stage" -type d -exec chmod 0755 {} +
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/md5sums"
dpkg-deb --root-owner-group -Zxz --build "$stage" \
    "$out/virtnode-dbgsym_${version}_amd64.ddeb" > /dev/null
