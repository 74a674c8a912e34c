#!/usr/bin/env bash
# Builds local stand-ins for the Dockerfile's base images without pulling
# anything from a registry:
#
#   $RUNTIME_IMAGE (default debian:bookworm-slim): a minimal Debian rootfs
#       made with debootstrap and loaded with `docker import`;
#   $RUST_IMAGE (default rust:1.95-slim-bookworm): the same Debian with gcc
#       and the C library headers, plus this machine's own Rust toolchain
#       (rustc --print sysroot) laid out as the official rust image lays it
#       out (/usr/local/cargo, RUSTUP_HOME-free), and this machine's CA
#       bundle, so cargo inside a build reaches crates.io through a
#       TLS-intercepting proxy. The bundle lives only in the local image; it
#       is never written into the repository.
#
# On a machine that can pull images none of this is needed: `docker build .`
# uses the public images of the same names.
#
# Usage: deploy/images.sh [--force]   (skips images that already exist)
set -euo pipefail

RUNTIME_IMAGE=${RUNTIME_IMAGE:-debian:bookworm-slim}
RUST_IMAGE=${RUST_IMAGE:-rust:1.95-slim-bookworm}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
WORK=${WORK:-/var/tmp/cairn-images}
CACHE=${CACHE:-/var/cache/cairn-debootstrap}
force=false
[[ ${1:-} == --force ]] && force=true

log() { echo "images: $*" >&2; }
have() { [[ $force == false ]] && docker image inspect "$1" >/dev/null 2>&1; }

if [[ $(id -u) != 0 ]]; then
  log "debootstrap needs root"
  exit 1
fi
if ! command -v debootstrap >/dev/null; then
  log "installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
fi
mkdir -p "$WORK" "$CACHE"

# Strips what a slim image leaves out: docs, man pages, locales, apt lists.
slim() {
  local root=$1
  rm -rf "$root"/usr/share/{doc,man,info,locale}/* "$root"/var/lib/apt/lists/* \
    "$root"/var/cache/apt/archives/*.deb "$root"/var/log/* "$root"/tmp/*
}

# debootstrap SUITE into DIR with extra packages; reuses downloaded .debs.
bootstrap() {
  local dir=$1 include=$2
  rm -rf "$dir"
  debootstrap --variant=minbase --cache-dir="$CACHE" ${include:+--include="$include"} \
    "$SUITE" "$dir" "$MIRROR" >"$dir.log" 2>&1 || {
    tail -n 30 "$dir.log" >&2
    return 1
  }
}

import() {
  local dir=$1 tag=$2
  shift 2
  tar -C "$dir" -c . | docker import "$@" - "$tag" >/dev/null
  log "$tag: $(docker image inspect -f '{{.Size}}' "$tag" | numfmt --to=iec)"
}

if have "$RUNTIME_IMAGE"; then
  log "$RUNTIME_IMAGE exists"
else
  log "debootstrap $SUITE for $RUNTIME_IMAGE"
  bootstrap "$WORK/runtime" ""
  slim "$WORK/runtime"
  import "$WORK/runtime" "$RUNTIME_IMAGE" --change 'CMD ["bash"]'
  rm -rf "$WORK/runtime"
fi

if have "$RUST_IMAGE"; then
  log "$RUST_IMAGE exists"
else
  sysroot=$(rustc --print sysroot)
  log "debootstrap $SUITE for $RUST_IMAGE with the toolchain in $sysroot"
  root="$WORK/rust"
  bootstrap "$root" "gcc,libc6-dev,ca-certificates"
  slim "$root"
  # The toolchain: compiler, cargo, the standard library for this target.
  mkdir -p "$root/usr/local/rust" "$root/usr/local/cargo/bin"
  cp -a "$sysroot/bin" "$sysroot/lib" "$root/usr/local/rust/"
  [[ -d $sysroot/libexec ]] && cp -a "$sysroot/libexec" "$root/usr/local/rust/"
  for b in "$root"/usr/local/rust/bin/*; do
    ln -s "../../rust/bin/$(basename "$b")" "$root/usr/local/cargo/bin/"
  done
  cp "$CA_BUNDLE" "$root/etc/ssl/certs/ca-certificates.crt"
  import "$root" "$RUST_IMAGE" \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]'
  rm -rf "$root"
fi
