#!/usr/bin/env bash
# Build the CPU image with podman and check it the way a deployment would: the API on a tiny
# library (health, a refused unkeyed search, a keyed search), its HEALTHCHECK, the non-root
# user, the refusal to serve without a key, and the Streamlit alternative.
#
#   sudo scripts/container/check.sh   # after ./dev.sh setup; needs podman (apt-get install podman)
#
# BASE_IMAGE replaces the Dockerfile's FROM (podman build --from). Where no registry can be
# reached, BASE_IMAGE=debian builds one from Debian packages (debootstrap: bookworm + its
# Python 3.11). SANDBOX=1 runs containers through scripts/container/sandbox-runc (runc without
# the rlimits and cgroup limits that a sandbox may forbid; apt-get install runc).
# BUILD_VOLUMES adds `-v` mounts to the build (e.g. a local PyPI mirror and its pip.conf).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
work=$(mktemp -d)
trap 'podman rm -f medxpert-check medxpert-check-app >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
step() { printf '\n==> %s\n' "$*"; }

if [ "${SANDBOX:-0}" = 1 ]; then
  cat > "$work/containers.conf" <<CONF
[engine]
cgroup_manager = "cgroupfs"
runtime = "sandboxrunc"

[engine.runtimes]
sandboxrunc = ["$PWD/scripts/container/sandbox-runc"]
CONF
  export CONTAINERS_CONF="$work/containers.conf"
fi

from=()
if [ "${BASE_IMAGE:-}" = debian ]; then
  BASE_IMAGE=localhost/debian-python:3.11-bookworm
  if ! podman image exists "$BASE_IMAGE"; then
    step "base image from Debian packages (debootstrap bookworm, python3 3.11)"
    debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,python-is-python3,ca-certificates \
      bookworm "$work/rootfs" http://deb.debian.org/debian > "$work/debootstrap.log"
    rm -f "$work"/rootfs/usr/lib/python3.11/EXTERNALLY-MANAGED "$work"/rootfs/var/cache/apt/archives/*.deb
    tar -C "$work/rootfs" -c . | podman import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$BASE_IMAGE"
  fi
fi
[ -n "${BASE_IMAGE:-}" ] && from=(--from "$BASE_IMAGE")

step "podman build (Dockerfile${BASE_IMAGE:+, FROM $BASE_IMAGE})"
start=$(date +%s)
# shellcheck disable=SC2086
podman build --format docker --network host "${from[@]}" ${BUILD_VOLUMES:-} -t localhost/medxpert:cpu -f Dockerfile .
echo "built in $(( $(date +%s) - start )) s; $(podman image inspect localhost/medxpert:cpu --format '{{.Size}}') bytes"

step "a tiny workspace (model + library) for the volumes"
HF_HUB_OFFLINE=1 .venv/bin/python - "$work/ws" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, ".")
from medxpert.data.locate import find_pack
from tests.builders import tiny_workspace
tiny_workspace(Path(sys.argv[1]), {p: find_pack(p) for p in ("nih_cxr14", "iu_xray", "covid_cxr")})
PY
chmod -R a+rX "$work/ws"
volumes=(-v "$work/ws/models:/models" -v "$work/ws/indexes:/indexes" -v "$work/ws/data:/data:ro")

step "without MEDXPERT_API_KEY the default command refuses to serve beyond loopback"
if podman run --rm --network host localhost/medxpert:cpu > "$work/nokey.log" 2>&1; then
  echo "FAIL: it served without a key"; exit 1
fi
grep -q MEDXPERT_API_KEY "$work/nokey.log" && echo "refused, naming MEDXPERT_API_KEY"

step "the API (default command) with a key"
podman run -d --name medxpert-check --network host -e MEDXPERT_API_KEY=check-key "${volumes[@]}" \
  localhost/medxpert:cpu > /dev/null
for _ in $(seq 120); do curl -sf http://127.0.0.1:8000/health > /dev/null && break; sleep 1; done
curl -sf http://127.0.0.1:8000/health | python3 -c 'import json,sys; h=json.load(sys.stdin); print("health:", h["status"], h["index"]["cases"], "cases")'
query='{"text": "right pleural effusion", "k": 3}'
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST http://127.0.0.1:8000/search -H 'content-type: application/json' -d "$query")
[ "$code" = 401 ] && echo "search without the key: 401"
curl -sf -X POST http://127.0.0.1:8000/search -H 'X-API-Key: check-key' -H 'content-type: application/json' -d "$query" \
  | python3 -c 'import json,sys; print("search:", [h["rank"] for h in json.load(sys.stdin)["hits"]])'
podman healthcheck run medxpert-check && echo "HEALTHCHECK: healthy"
echo "user: $(podman exec medxpert-check id -un)"

step "the Streamlit alternative"
podman run -d --name medxpert-check-app --network host "${volumes[@]}" localhost/medxpert:cpu \
  medxpert app --host 0.0.0.0 --port 8501 --trusted-network > /dev/null
for _ in $(seq 120); do curl -sf http://127.0.0.1:8501/_stcore/health > /dev/null && break; sleep 1; done
echo "app health: $(curl -sf http://127.0.0.1:8501/_stcore/health)"
start=$(date +%s); podman stop medxpert-check-app medxpert-check > /dev/null
echo "both stopped on SIGTERM in $(( $(date +%s) - start )) s"
echo "container check passed"
