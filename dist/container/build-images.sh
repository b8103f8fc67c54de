#!/usr/bin/env bash
# Build the container images compose.yaml runs.
#
#   dist/container/build-images.sh BINARY [--nats]
#
#   BINARY  a statically linked skos (dist/build-static.sh): the image is
#           FROM scratch, so nothing else is in it; also SKOS_BIN
#   --nats  also build localhost/nats-server from this machine's
#           nats-server and the libraries it links (for machines that
#           reach no registry; compose.yaml then runs it with
#           SKOS_NATS_IMAGE=localhost/nats-server)
#
#   PODMAN  the podman command to run (default: podman; docker works too)
#   SKOS_IMAGE  the tag of the SKOS image (default: localhost/skos:latest)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-${SKOS_BIN:-}}
nats=0
[ "${2:-}" = --nats ] && nats=1
podman=${PODMAN:-podman}
image=${SKOS_IMAGE:-localhost/skos:latest}
[ -n "$bin" ] || { echo "usage: $0 BINARY [--nats]" >&2; exit 2; }
[ -x "$bin" ] || { echo "$0: $bin: not an executable file" >&2; exit 1; }
# A static binary has no program interpreter (PT_INTERP).
if LC_ALL=C readelf -lW "$bin" 2>/dev/null | grep -q 'Requesting program interpreter'; then
  echo "$0: $bin is dynamically linked; an image FROM scratch needs the static build (dist/build-static.sh)" >&2
  exit 1
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$bin" "$ctx/skos"
mkdir -m 0700 "$ctx/data"
cp "$here/Containerfile" "$ctx/Containerfile"
$podman build -q -t "$image" -f "$ctx/Containerfile" "$ctx" >/dev/null
echo "$image"

if [ "$nats" -eq 1 ]; then
  server=$(type -P nats-server || echo /usr/sbin/nats-server)
  [ -x "$server" ] || { echo "$0: nats-server not found (apt-get install nats-server)" >&2; exit 1; }
  mkdir -p "$ctx/nats/root/usr/sbin"
  cp "$server" "$ctx/nats/root/usr/sbin/nats-server"
  # The libraries it links and the loader, each at its own path.
  for lib in $(ldd "$server" | grep -o '/[^ ]*'); do
    mkdir -p "$ctx/nats/root$(dirname "$lib")"
    cp -L "$lib" "$ctx/nats/root$lib"
  done
  cp "$here/nats.Containerfile" "$ctx/nats/Containerfile"
  $podman build -q -t localhost/nats-server:latest -f "$ctx/nats/Containerfile" "$ctx/nats" >/dev/null
  echo localhost/nats-server:latest
fi
