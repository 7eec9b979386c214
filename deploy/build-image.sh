#!/bin/sh
# Build deploy/Containerfile with podman, buildah or docker (the first here that can), tagged $IMAGE:
#   make image [IMAGE=omni-mev:latest] [PYTHON_IMAGE=python:3.11-slim-bookworm] [IMAGE_ARGS="--build-arg ..."]
# The base is PYTHON_IMAGE where it is here or can be pulled; otherwise one made from Debian's packages
# (deploy/base-image.sh, with mmdebstrap). pip inside the build uses the host's CA bundle when the host's pip is
# configured with one (a TLS-inspecting proxy's).
set -eu
IMAGE=${IMAGE:-omni-mev:latest}
PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.11-slim-bookworm}
LOCAL_BASE=localhost/debian-python:3.11
IMAGE_ARGS=${IMAGE_ARGS:-}
if command -v podman >/dev/null 2>&1; then CLI=podman
elif command -v buildah >/dev/null 2>&1; then CLI=buildah
elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then CLI=docker
else echo "make image needs podman, buildah or a running docker (apt-get install podman)" >&2; exit 1
fi

have() {
    case "$CLI" in
        docker) docker image inspect "$1" >/dev/null 2>&1 ;;
        *) "$CLI" inspect --type image "$1" >/dev/null 2>&1 ;;
    esac
}
base=$PYTHON_IMAGE
if ! have "$base" && ! timeout 120 "$CLI" pull -q "$base" >/dev/null 2>&1; then
    echo "image: $base cannot be pulled; using $LOCAL_BASE, made from Debian's packages" >&2
    have "$LOCAL_BASE" || CLI=$CLI sh deploy/base-image.sh "$LOCAL_BASE"
    base=$LOCAL_BASE
fi

set -- --build-arg "PYTHON_IMAGE=$base" -f deploy/Containerfile -t "$IMAGE"
cert=${PIP_CERT:-$(pip3 config get global.cert 2>/dev/null || true)}
if [ "$CLI" != docker ]; then
    set -- --format docker --ignorefile deploy/Containerfile.dockerignore "$@"
    if [ -n "$cert" ] && [ -f "$cert" ]; then
        set -- -v "$cert:/etc/ssl/host-ca.pem:ro" --env PIP_CERT=/etc/ssl/host-ca.pem "$@"
    fi
fi
case "$CLI" in
    buildah) set -- buildah build "$@" ;;
    *) set -- "$CLI" build "$@" ;;
esac
# shellcheck disable=SC2086 # IMAGE_ARGS is a list of words
"$@" $IMAGE_ARGS .
