#!/usr/bin/env bash
# The project's one test command.
#
#   ./test.sh                    install what the tests need (Debian, when
#                                missing), then fmt, clippy and every test
#   SKOS_TEST_FAST=1 ./test.sh   the tests only (no fmt, no clippy)
#   SKOS_TEST_REQUIRE_ALL=1 ./test.sh
#                                every prerequisite is required: a test that
#                                cannot run here (no root, no tmpfs, no tool)
#                                fails with its reason instead of skipping,
#                                and a package that cannot be installed stops
#                                the run (.ci/run sets this)
#
# Needs the Rust toolchain (rustup with clippy and rustfmt). Everything else
# is installed with apt-get when it is missing: nats-server (the NATS tests
# start their own servers), a C compiler and make (the TLS crate and
# jemalloc build C code),
# procps (`kill`), for the mesh tests wireguard-go, wireguard-tools and
# iproute2, openssl (test certificates) and systemd (`systemd-analyze` checks
# the shipped units), fuse3 (`fusermount3`: how a non-root run mounts the
# fake cpufreq driver), faketime (agents whose clock is an hour off),
# chromium (the live page, in a headless browser), and podman, runc and
# busybox-static (workloads as real containers and processes), monit and
# prometheus-node-exporter (measured beside the agent by skos-bench), and for
# the install paths lintian (the .deb's checks) and debootstrap (a throwaway
# Debian root the .deb and `skos install` go into). Before the tests it builds
# the statically linked binary (dist/build-static.sh) the package and the
# images are made of, and exports its path as SKOS_STATIC_BIN (SKOS_STATIC_BIN
# set: that one is used).
# Runs unattended: no prompts, no stdin.
set -euo pipefail

cd "$(dirname "$0")"

export DEBIAN_FRONTEND=noninteractive
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
# sbin directories are not on every user's PATH; the tools live there.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi

started=$SECONDS
current="setup"
ran=()

heading() {
  current="$1"
  printf '\n==> %s\n' "$1"
}
note() { printf 'test.sh: %s\n' "$*"; }
warn() { printf 'test.sh: warning: %s\n' "$*" >&2; }
die() {
  printf 'test.sh: error: %s\n' "$*" >&2
  exit 1
}

on_exit() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    printf '\ntest.sh: FAILED during "%s" (exit %s) after %ss\n' "$current" "$rc" "$((SECONDS - started))" >&2
  fi
}
trap on_exit EXIT

# An executable on PATH (builtins such as bash's `kill` do not count).
have() { type -P "$1" >/dev/null 2>&1; }

# --- what the tests need ----------------------------------------------------

heading "checking test prerequisites"

required=()  # without these the tests cannot run
optional=()  # later tests need these; a failed install only warns
have nats-server || required+=(nats-server)
have cc || required+=(gcc libc6-dev)
# jemalloc (the skos binary's allocator) is built with its configure and make.
have make || required+=(make)
have kill || required+=(procps)
have wireguard-go || optional+=(wireguard-go)
have wg || optional+=(wireguard-tools)
have ip || optional+=(iproute2)
# The fake cpufreq driver is a FUSE filesystem: root mounts it with mount(2),
# anyone else through the setuid fusermount3.
have fusermount3 || optional+=(fuse3)
have openssl || optional+=(openssl)
have systemd-analyze || optional+=(systemd)
# The clock skew tests run agents an hour off through libfaketime.
have faketime || optional+=(faketime)
# The live page is tested in a real headless browser.
have chromium || optional+=(chromium)
# HTTPS to the API is checked with curl.
have curl || optional+=(curl)
# Workloads run as real containers through Podman's Docker Engine API
# (runc: crun refuses hybrid cgroups), from images built FROM scratch
# with the static busybox, which also serves HTTP as a process workload.
have podman || optional+=(podman)
have runc || optional+=(runc)
# skos-bench footprint measures the agent beside Monit and the Prometheus
# node exporter (the bench only starts them; it installs nothing).
have monit || optional+=(monit)
have prometheus-node-exporter || optional+=(prometheus-node-exporter)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' ||
  optional+=(busybox-static)
# The install paths: the .deb checked by lintian and installed into a
# debootstrap root (so does `skos install`).
have lintian || optional+=(lintian)
have debootstrap || optional+=(debootstrap)

require_all=0
case "${SKOS_TEST_REQUIRE_ALL:-0}" in 1 | true | yes) require_all=1 ;; esac
if [ "$require_all" -eq 1 ]; then
  note "SKOS_TEST_REQUIRE_ALL=1: every prerequisite is required, no test may skip"
  required+=("${optional[@]}")
  optional=()
fi

if [ "${#required[@]}" -eq 0 ] && [ "${#optional[@]}" -eq 0 ]; then
  note "nothing to install"
else
  as_root=""
  can_install=1
  if [ "$(id -u)" -ne 0 ]; then
    if have sudo && sudo -n true 2>/dev/null; then
      as_root="sudo -n"
    else
      can_install=0
    fi
  fi
  if ! have apt-get; then
    can_install=0
  fi

  if [ "$can_install" -eq 0 ]; then
    why="not running as root (and no password-less sudo)"
    have apt-get || why="apt-get not found (not a Debian system)"
    for p in "${optional[@]}"; do
      warn "$p is missing and cannot be installed: $why; the tests that need it may fail"
    done
    if [ "${#required[@]}" -gt 0 ]; then
      die "missing: ${required[*]}; cannot install: $why.
  Install them, e.g.: sudo apt-get install ${required[*]}
  or run ./test.sh as root."
    fi
  else
    note "updating the package lists (apt-get update)"
    if ! $as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null; then
      [ "${#required[@]}" -eq 0 ] || die "apt-get update failed; cannot install ${required[*]}"
      warn "apt-get update failed; trying to install from the existing package lists"
    fi
    apt_install() {
      $as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" </dev/null
    }
    if [ "${#required[@]}" -gt 0 ]; then
      note "installing: ${required[*]}"
      apt_install "${required[@]}" || die "could not install ${required[*]}"
    fi
    for p in "${optional[@]}"; do
      note "installing: $p"
      apt_install "$p" || warn "could not install $p; the tests that need it may fail"
    done
  fi
  have nats-server || die "nats-server is still not on PATH after installing it"
fi
note "nats-server: $(type -P nats-server) ($(nats-server --version 2>/dev/null || echo 'version unknown'))"

# --- the Rust toolchain -----------------------------------------------------

have cargo || die "cargo not found: install the Rust toolchain (https://rustup.rs) and re-run"
if [ "${SKOS_TEST_FAST:-0}" != 1 ]; then
  for pair in fmt:rustfmt clippy:clippy; do
    sub=${pair%%:*} component=${pair#*:}
    if ! cargo "$sub" --version >/dev/null 2>&1; then
      have rustup || die "cargo $sub is missing: install the $component component of the Rust toolchain"
      note "installing the Rust component $component"
      rustup component add "$component" || die "cargo $sub is missing and rustup could not add $component"
    fi
  done
fi
note "$(cargo --version)"

# --- checks -----------------------------------------------------------------

if [ "${SKOS_TEST_FAST:-0}" = 1 ]; then
  note "SKOS_TEST_FAST=1: skipping cargo fmt and cargo clippy"
else
  heading "cargo fmt --all -- --check"
  cargo fmt --all -- --check
  ran+=(fmt)

  heading "cargo clippy --workspace --all-targets -- -D warnings"
  cargo clippy --workspace --all-targets -- -D warnings
  ran+=(clippy)
fi

# `skos` verifies audit trails: records of this version from their stored
# text, records of earlier versions (stored in another form than hashed) as
# their entry renders again after parsing, which needs floats parsed exactly:
# serde_json's float_roundtrip, the skos package's default `exact-floats`
# (node records read back hold the exact values with it too; skos-bench runs
# a coordinator in its own process). A workspace-wide build unifies features
# across crates and would not notice a package losing it, so each package's
# own graph is asked.
heading "exact float parsing in skos and skos-bench (cargo tree)"
for pkg in skos skos-bench; do
  graph=$(cargo tree --locked -p "$pkg" -e features,normal --target all -i serde_json) \
    || die "cargo tree -p $pkg failed"
  grep -q 'serde_json feature "float_roundtrip"' <<<"$graph" \
    || die "$pkg is built without serde_json's float_roundtrip: audit records of earlier versions holding full-precision floats would verify as changed"
done
ran+=(exact-floats)

# The package, `skos install` and compose tests use the static binary.
if [ -z "${SKOS_STATIC_BIN:-}" ]; then
  heading "the static binary (dist/build-static.sh)"
  # Both binaries (skos, skos-agent), with the dev profile: static all the
  # same, without the release profiles' whole-program optimisation.
  build_static() {
    local paths
    paths=$(SKOS_STATIC_PROFILE="${SKOS_STATIC_PROFILE:-dev}" dist/build-static.sh all) || return 1
    printf '%s\n' "$paths" | sed -n 1p
  }
  if SKOS_STATIC_BIN=$(build_static) && [ -n "$SKOS_STATIC_BIN" ]; then
    SKOS_STATIC_DIR=$(dirname "$SKOS_STATIC_BIN")
    export SKOS_STATIC_BIN SKOS_STATIC_DIR
    note "static binaries: $SKOS_STATIC_DIR (skos, skos-agent)"
  else
    [ "$require_all" -eq 0 ] || die "dist/build-static.sh failed"
    unset SKOS_STATIC_BIN
    warn "no static binary: the package and compose tests will skip"
  fi
  ran+=("static build")
fi

if cargo nextest --version >/dev/null 2>&1; then
  heading "cargo nextest run --workspace"
  cargo nextest run --workspace
  ran+=("tests (nextest)")

  # nextest does not run doctests.
  heading "cargo test --workspace --doc"
  cargo test --workspace --doc
  ran+=(doctests)
else
  heading "cargo test --workspace"
  cargo test --workspace
  ran+=("tests (cargo test)")
fi

current="summary"
joined=$(printf '%s, ' "${ran[@]}")
printf '\ntest.sh: OK: %s passed in %ss\n' "${joined%, }" "$((SECONDS - started))"
