#!/bin/sh
# A Debian bookworm base with Python 3.11, made from Debian's packages by mmdebstrap, for hosts that cannot pull a
# registry's python image: `make image` runs it when the base it was asked for cannot be had.
#   sh deploy/base-image.sh [TAG]        (default localhost/debian-python:3.11)
set -eu
TAG=${1:-localhost/debian-python:3.11}
CLI=${CLI:-$(command -v podman || command -v buildah || command -v docker)}
command -v mmdebstrap >/dev/null 2>&1 || { echo "base-image: needs mmdebstrap (apt-get install mmdebstrap)" >&2; exit 1; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$scratch/base.tar"
case "$CLI" in
    *buildah) container=$(buildah from scratch) && buildah add "$container" "$scratch/base.tar" / \
              && buildah commit --rm "$container" "$TAG" ;;
    *) "$CLI" import "$scratch/base.tar" "$TAG" ;;
esac
