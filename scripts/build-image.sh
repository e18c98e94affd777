#!/usr/bin/env bash
# make image: the operator image and the slim sidecar image from the Dockerfile.
#
#   Docker, where an engine answers `docker info`: docker build (the digest-pinned Python base).
#   Otherwise buildah (Debian: apt-get install buildah), rootful, chroot isolation. The base is the
#   Dockerfile's python:3.11-slim-bookworm when the registry can be reached; else a Debian bookworm
#   root filesystem with Debian's python3 made by mmdebstrap from deb.debian.org (apt-get install
#   mmdebstrap), cached in .image-cache/ and imported as localhost/k1s0-python-base:bookworm-<hash>.
#
# Environment: IMAGE (k1s0-eventstore), TAG (the package version), PYTHON_IMAGE (a base to use as
# is), K1S0_IMAGE_BASE=debian (skip the registry and use the mmdebstrap base).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-k1s0-eventstore}
TAG=${TAG:-$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -1)}
OPERATOR="$IMAGE:$TAG"
SIDECAR="$IMAGE-sidecar:$TAG"
CACHE=.image-cache
DEBIAN_BASE=localhost/k1s0-python-base:bookworm
# What the Debian base holds: Python and venv (the build stages make virtualenvs), useradd,
# CA certificates (TLS to Kafka, the JWKS endpoint, PostgreSQL).
DEBIAN_PACKAGES=python3,python3-venv,python-is-python3,passwd,ca-certificates

size() { "$@" 2>/dev/null | head -1; }

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  args=()
  [[ -n ${PYTHON_IMAGE:-} ]] && args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
  docker build "${args[@]}" --target operator -t "$OPERATOR" .
  docker build "${args[@]}" --target sidecar -t "$SIDECAR" .
  for ref in "$OPERATOR" "$SIDECAR"; do
    echo "$ref: $(docker image inspect --format '{{.Size}}' "$ref") bytes"
  done
  exit 0
fi

if ! command -v buildah >/dev/null 2>&1; then
  echo "make image: neither a Docker engine (docker info failed) nor buildah (apt-get install buildah mmdebstrap)" >&2
  exit 2
fi

base=${PYTHON_IMAGE:-}
if [[ -z $base && ${K1S0_IMAGE_BASE:-} != debian ]]; then
  pinned=$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile)
  if timeout 60 buildah pull -q "docker.io/library/$pinned" >/dev/null 2>&1; then
    base="docker.io/library/$pinned"
  else
    echo "make image: cannot pull $pinned; using a Debian bookworm base made with mmdebstrap" >&2
  fi
fi
if [[ -z $base ]]; then
  # merged /usr set up by mmdebstrap's hook, not by Debian's usrmerge package (which pulls in a
  # full perl, ~50 MB, for a one-time conversion). The tag names what the base was made from.
  hooks=/usr/share/mmdebstrap/hooks/merged-usr
  key=$(printf '%s %s' "$DEBIAN_PACKAGES" "$hooks" | sha256sum | cut -c1-12)
  base="$DEBIAN_BASE-$key"
  if ! buildah inspect --type image "$base" >/dev/null 2>&1; then
    rootfs="$CACHE/bookworm-python3-$key.tar"
    if [[ ! -s $rootfs ]]; then
      command -v mmdebstrap >/dev/null 2>&1 || { echo "make image: apt-get install mmdebstrap" >&2; exit 2; }
      mkdir -p "$CACHE"
      # The target name ends in .tar: mmdebstrap picks its output format by it.
      mmdebstrap --quiet --variant=minbase --include="$DEBIAN_PACKAGES" --hook-dir="$hooks" \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --aptopt='Acquire::Retries "3"' \
        bookworm "$CACHE/partial-$key.tar" http://deb.debian.org/debian
      mv "$CACHE/partial-$key.tar" "$rootfs"
    fi
    ctr=$(buildah from scratch)
    buildah add --quiet "$ctr" "$rootfs" / >/dev/null
    buildah config --env LANG=C.UTF-8 --cmd python3 "$ctr"
    buildah commit --quiet --rm "$ctr" "$base" >/dev/null
  fi
fi

# A PyPI reached through a TLS-intercepting proxy: its CA (PIP_CERT on this host) for pip in the
# build stages only, mounted read-only, never copied into an image.
pip_args=()
if [[ -n ${PIP_CERT:-} && -r $PIP_CERT ]]; then
  pip_args+=(--volume "$(readlink -f "$PIP_CERT"):/run/k1s0-pip-ca.crt:ro" --build-arg PIP_CERT=/run/k1s0-pip-ca.crt)
fi
pip_args+=(--build-arg "PIP_INDEX_URL=${PIP_INDEX_URL:-https://pypi.org/simple}")
for target in operator sidecar; do
  ref=$OPERATOR; [[ $target == sidecar ]] && ref=$SIDECAR
  buildah build --quiet --layers --isolation chroot --build-arg "PYTHON_IMAGE=$base" "${pip_args[@]}" \
    --target "$target" -t "$ref" . >/dev/null
done
for ref in "$OPERATOR" "$SIDECAR"; do
  echo "$ref: $(buildah images --format '{{.Size}}' "$ref" | head -1) (base $base)"
done
