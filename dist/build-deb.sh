#!/usr/bin/env bash
# Build the Debian package skos_<version>_amd64.deb from a statically
# linked skos binary, with dpkg-deb (no debhelper, no cargo plugin: the
# binary is built once, by dist/build-static.sh, and packed as it is).
#
#   dist/build-deb.sh BINARY [OUT_DIR]
#
#   BINARY   the skos binary to pack (statically linked: the package
#            depends on nothing); also SKOS_BIN
#   OUT_DIR  where the .deb goes (default: target/deb)
#   SKOS_DEB_VERSION  the package version (default: the workspace's
#            version, with -1 as the Debian revision)
#   SKOS_DEB_COMPRESSION  dpkg-deb's compression (default xz; the tests use
#            gzip, five times faster for a larger file)
#
# Prints the path of the .deb it wrote. What is in it:
#   /usr/bin/skos                       the binary
#   /usr/bin/skos-agent                 the lean agent, where the agent's unit
#                                       runs it (SKOS_AGENT_BIN, else beside
#                                       BINARY; without it the unit runs
#                                       `skos agent`)
#   /lib/systemd/system/skos-*.service  dist/systemd's units, ExecStart=/usr/bin/skos
#   /etc/skos/config.yaml               config.example.yaml (a conffile)
#   /usr/share/man/man1/skos.1.gz       `skos man`
#   /usr/share/bash-completion/completions/skos
#   /usr/share/doc/skos/                copyright, changelog
#   /usr/share/lintian/overrides/skos   dist/deb/lintian-overrides: what
#                                       lintian says that is so on purpose
# and dist/deb's maintainer scripts: the `skos` system user, the data dirs
# /var/lib/skos (skos, 0700) and /var/lib/skos-agent (root, 0700), the
# config readable by group skos; on purge all of them go (the user only
# if the package made it: a `skos` user the machine had is kept).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
bin=${1:-${SKOS_BIN:-}}
out=${2:-$repo/target/deb}
[ -n "$bin" ] || { echo "usage: $0 BINARY [OUT_DIR]" >&2; exit 2; }
[ -x "$bin" ] || { echo "$0: $bin: not an executable file" >&2; exit 1; }
# A static binary has no program interpreter (PT_INTERP).
if LC_ALL=C readelf -lW "$bin" 2>/dev/null | grep -q 'Requesting program interpreter'; then
  echo "$0: $bin is dynamically linked; the package wants the static build (dist/build-static.sh)" >&2
  exit 1
fi

upstream=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$repo/Cargo.toml")
version=${SKOS_DEB_VERSION:-${upstream}-1}
arch=amd64

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg=$stage/skos
umask 022

install -D -m 0755 "$bin" "$pkg/usr/bin/skos"
install -d "$pkg/usr/bin"
# As Debian strips: symbols and notes out (the release profile keeps the
# symbol table for backtraces).
strip --remove-section=.comment --remove-section=.note --strip-unneeded "$pkg/usr/bin/skos"
# A unit may run the lean agent binary (skos-agent): packed when it is at
# hand (SKOS_AGENT_BIN, else beside BINARY), else the unit runs `skos agent`
# from the full binary, the same agent.
agent_bin=${SKOS_AGENT_BIN:-$(dirname "$bin")/skos-agent}
with_agent=0
if grep -q '^ExecStart=/usr/local/bin/skos-agent' "$repo"/dist/systemd/*.service; then
  if [ -x "$agent_bin" ] && ! LC_ALL=C readelf -lW "$agent_bin" 2>/dev/null | grep -q 'Requesting program interpreter'; then
    with_agent=1
    install -m 0755 "$agent_bin" "$pkg/usr/bin/skos-agent"
    strip --remove-section=.comment --remove-section=.note --strip-unneeded "$pkg/usr/bin/skos-agent"
  else
    echo "$0: no static skos-agent at $agent_bin: the agent's unit runs \`skos agent\`" >&2
  fi
fi
for unit in "$repo"/dist/systemd/*.service; do
  install -d "$pkg/lib/systemd/system"
  if [ "$with_agent" -eq 1 ]; then
    sed 's|/usr/local/bin/skos|/usr/bin/skos|g' "$unit"
  else
    sed -e 's|^ExecStart=/usr/local/bin/skos-agent|ExecStart=/usr/bin/skos agent|' \
      -e 's|/usr/local/bin/skos|/usr/bin/skos|g' "$unit"
  fi >"$pkg/lib/systemd/system/$(basename "$unit")"
  chmod 0644 "$pkg/lib/systemd/system/$(basename "$unit")"
done
install -D -m 0644 "$repo/config.example.yaml" "$pkg/etc/skos/config.yaml"
install -d "$pkg/usr/share/man/man1" "$pkg/usr/share/bash-completion/completions" "$pkg/usr/share/doc/skos"
"$bin" man | gzip -9n >"$pkg/usr/share/man/man1/skos.1.gz"
"$bin" completions bash >"$pkg/usr/share/bash-completion/completions/skos"
chmod 0644 "$pkg/usr/share/man/man1/skos.1.gz" "$pkg/usr/share/bash-completion/completions/skos"
# skos-agent is `skos agent`: the same page.
[ "$with_agent" -eq 0 ] || ln -s skos.1.gz "$pkg/usr/share/man/man1/skos-agent.1.gz"

cat >"$pkg/usr/share/doc/skos/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: skos
Source: https://github.com/skos/skos

Files: *
Copyright: 2024-2026 The SKOS authors
License: MIT
 Permission is hereby granted, free of charge, to any person obtaining a copy
 of this software and associated documentation files (the "Software"), to deal
 in the Software without restriction, including without limitation the rights
 to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
 copies of the Software, and to permit persons to whom the Software is
 furnished to do so, subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included in
 all copies or substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
 IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
 FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
 AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
 LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
 OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN
 THE SOFTWARE.

Files: jemalloc/*
Copyright: 2002-present Jason Evans <jasone@canonware.com>
 2007-2012 Mozilla Foundation
 2009-present Facebook, Inc.
Comment: jemalloc, the allocator of /usr/bin/skos, compiled into it
 (tikv-jemalloc-sys).
License: BSD-2-clause
 Redistribution and use in source and binary forms, with or without
 modification, are permitted provided that the following conditions are met:
 1. Redistributions of source code must retain the above copyright notice(s),
    this list of conditions and the following disclaimer.
 2. Redistributions in binary form must reproduce the above copyright notice(s),
    this list of conditions and the following disclaimer in the documentation
    and/or other materials provided with the distribution.
 .
 THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDER(S) \`\`AS IS'' AND ANY EXPRESS
 OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF
 MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED.  IN NO
 EVENT SHALL THE COPYRIGHT HOLDER(S) BE LIABLE FOR ANY DIRECT, INDIRECT,
 INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL DAMAGES (INCLUDING, BUT NOT
 LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES; LOSS OF USE, DATA, OR
 PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF
 LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE
 OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE OF THIS SOFTWARE, EVEN IF
 ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
COPYRIGHT
# A fixed date keeps the package reproducible (SOURCE_DATE_EPOCH when set).
date=$(date -R -u -d "@${SOURCE_DATE_EPOCH:-1767225600}")
printf 'skos (%s) unstable; urgency=medium\n\n  * Built from the SKOS sources.\n\n -- SKOS maintainers <skos@skos.invalid>  %s\n' \
  "$version" "$date" | gzip -9n >"$pkg/usr/share/doc/skos/changelog.Debian.gz"
chmod 0644 "$pkg/usr/share/doc/skos/"*
install -D -m 0644 "$here/deb/lintian-overrides" "$pkg/usr/share/lintian/overrides/skos"

install -d "$pkg/DEBIAN"
for script in postinst prerm postrm; do
  install -m 0755 "$here/deb/$script" "$pkg/DEBIAN/$script"
done
echo /etc/skos/config.yaml >"$pkg/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat >"$pkg/DEBIAN/control" <<CONTROL
Package: skos
Version: $version
Architecture: $arch
Maintainer: SKOS maintainers <skos@skos.invalid>
Installed-Size: $size
Depends: passwd
Section: admin
Priority: optional
Homepage: https://github.com/skos/skos
Description: self-healing immune system for Linux machines
 SKOS watches the machines of a small fleet and fixes what is safe to fix:
 agents on each node read temperatures, disks, process chains and WireGuard
 tunnels; a coordinator decides from a healing table, the agent acts, the
 coordinator verifies the fix, and every step goes into a hash-chained
 audit trail. One static binary: embedded mode (skos up), or a coordinator
 and agents over NATS JetStream (the skos-coordinator and skos-agent units).
CONTROL
(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) >"$pkg/DEBIAN/md5sums"
chmod 0644 "$pkg/DEBIAN/control" "$pkg/DEBIAN/conffiles" "$pkg/DEBIAN/md5sums"

mkdir -p "$out"
deb="$out/skos_${version}_${arch}.deb"
dpkg-deb --root-owner-group "-Z${SKOS_DEB_COMPRESSION:-xz}" --build "$pkg" "$deb" >/dev/null
echo "$deb"
