#!/usr/bin/env bash
# Build a fully static SKOS binary for x86_64 (no dynamic loader, no
# shared libraries: it runs on a bare machine and in a FROM scratch image)
# and print its path on standard output; progress goes to standard error.
#
#   dist/build-static.sh              the full `skos` binary
#   dist/build-static.sh skos-agent   the lean agent for nodes (`skos-agent`)
#   dist/build-static.sh all          both, one path a line (skos first)
#   SKOS_STATIC_PROFILE=dev dist/build-static.sh all
#                                     both with the dev profile (what the
#                                     tests use: quick to build, static too)
#
# glibc, linked statically (`-C target-feature=+crt-static`): the musl
# target is not needed. The profiles are `dist` and, for skos-agent,
# `dist-agent` (Cargo.toml: size first, fat LTO). CARGO_TARGET_DIR is honoured. Names in NATS_URL resolve from
# /etc/hosts and DNS (glibc >= 2.34 has both built into libc.a); other NSS
# modules (mdns, LDAP, systemd's myhostname) are not loaded by a static
# binary. A static binary cannot load the NVIDIA management library: GPU
# nodes run the dynamic build (`cargo build --release`).
set -euo pipefail

cd "$(dirname "$0")/.."

what="${1:-skos}"
case "$what" in
  skos) bins=(skos) ;;
  skos-agent) bins=(skos-agent) ;;
  all) bins=(skos skos-agent) ;;
  *)
    echo "build-static.sh: unknown binary '$what' (skos, skos-agent or all)" >&2
    exit 2
    ;;
esac

target=x86_64-unknown-linux-gnu

# --target keeps build scripts and proc macros dynamic (they run here);
# only the shipped binaries are static. Still position-independent (the
# kernel places it at a random address), with its relative relocations
# packed (DT_RELR, glibc >= 2.36): a table of a few kB instead of half a
# megabyte that every process reads at start (a flag of each final
# binary's link alone: `cargo rustc`). The agent, which runs on every node
# and is mostly asleep, has a profile of its own, `dist-agent`: every
# crate optimised for size alone (`opt-level = "z"`); the coordinator
# keeps `dist` (`"s"`).
# SKOS_STATIC_PROFILE builds both with another profile instead (the test
# suite uses `dev`: static all the same, in minutes rather than the
# whole-program optimisation's tens of minutes; both then land in one dir).
profile_of() {
  if [ -n "${SKOS_STATIC_PROFILE:-}" ]; then
    echo "$SKOS_STATIC_PROFILE"
  elif [ "$1" = skos-agent ]; then
    echo dist-agent
  else
    echo dist
  fi
}
out_of() { if [ "$1" = dev ]; then echo debug; else echo "$1"; fi; }
# The shipped agent verifies no audit trail: it is built without the `skos`
# package's default `exact-floats` (serde_json's exact float parser, code it
# would carry and map on every node for nothing). Under SKOS_STATIC_PROFILE
# both binaries share one build, features and all; `skos` always has it.
features_of() {
  if [ "$1" = skos-agent ] && [ -z "${SKOS_STATIC_PROFILE:-}" ]; then
    echo --no-default-features
  fi
}
for b in "${bins[@]}"; do
  RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo rustc --locked --profile "$(profile_of "$b")" --target "$target" -p skos --bin "$b" \
    $(features_of "$b") -- -C link-arg=-Wl,-z,pack-relative-relocs >&2
done

for b in "${bins[@]}"; do
  bin="${CARGO_TARGET_DIR:-target}/$target/$(out_of "$(profile_of "$b")")/$b"
  [ -x "$bin" ] || {
    echo "build-static.sh: $bin was not built" >&2
    exit 1
  }
  # A static binary has no program interpreter (PT_INTERP).
  if LC_ALL=C readelf -lW "$bin" 2>/dev/null | grep -q 'Requesting program interpreter'; then
    echo "build-static.sh: $bin is dynamically linked" >&2
    exit 1
  fi
  realpath "$bin"
done
