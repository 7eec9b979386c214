#!/bin/sh
# Run the built image as a platform would (read-only root file system, PORT set) and check it: its user is not
# root, /v2/health/ready answers 200, /predict answers a confidence, and SIGTERM stops it with exit code 0.
#   make image-check [IMAGE=omni-mev:latest] [RUN_ARGS="..."]
# RUN_ARGS goes to `run`; CONTAINER_CLI is the command (default: podman, else docker).
set -eu
IMAGE=${IMAGE:-omni-mev:latest}
CONTAINER_CLI=${CONTAINER_CLI:-$(command -v podman || command -v docker)}
# podman: limits a container may keep where the host refuses to raise them (deploy/containers.conf).
case "$CONTAINER_CLI" in *podman*) CONTAINERS_CONF=${CONTAINERS_CONF:-deploy/containers.conf}; export CONTAINERS_CONF ;; esac
PORT=${PORT:-18080}
NAME=omni-mev-check-$$
BODY='{"features": [10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0]}'

cleanup() { $CONTAINER_CLI rm -f "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT
# shellcheck disable=SC2086 # CONTAINER_CLI and RUN_ARGS are lists of words
$CONTAINER_CLI run -d --name "$NAME" --read-only --network host -e PORT="$PORT" -e PROMETHEUS_PORT=$((PORT + 1)) \
    ${RUN_ARGS:-} "$IMAGE" >/dev/null
ready=""
for _ in $(seq 100); do
    if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/v2/health/ready', timeout=1)" \
        2>/dev/null; then ready=1; break; fi
    sleep 0.2
done
[ -n "$ready" ] || { $CONTAINER_CLI logs "$NAME"; echo "image-check: /v2/health/ready never answered 200" >&2; exit 1; }
python3 - "$PORT" "$BODY" <<'PY'
import json, sys, urllib.request
port, body = sys.argv[1], sys.argv[2].encode()
request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=body,
                                 headers={"Content-Type": "application/json"})
answer = json.load(urllib.request.urlopen(request, timeout=5))
assert 0.0 <= answer["confidence"] <= 1.0 and answer["mode"] == "SIMULATION", answer
print(f"image-check: /predict answered confidence {answer['confidence']} from {answer['model_type']}/"
      f"{answer['model_version']}")
PY
user=$($CONTAINER_CLI exec "$NAME" python3 -c "import os; print(os.getuid())")
[ "$user" != 0 ] || { echo "image-check: the service runs as root" >&2; exit 1; }
$CONTAINER_CLI stop -t 40 "$NAME" >/dev/null
code=$($CONTAINER_CLI inspect "$NAME" --format '{{.State.ExitCode}}')
[ "$code" = 0 ] || { $CONTAINER_CLI logs "$NAME" | tail -20; echo "image-check: exit code $code after SIGTERM" >&2; exit 1; }
echo "image-check: $IMAGE ran as uid $user on a read-only root, answered, and stopped cleanly on SIGTERM;" \
     "size $($CONTAINER_CLI image inspect "$IMAGE" --format '{{.Size}}') bytes"
