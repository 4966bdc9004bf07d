#!/usr/bin/env bash
# The compose stack, end to end: build the images (skipped when up to date), start the stack,
# trigger tfserving_resnet through the REST API v2 against a locally served demo model, wait for
# the run, check it, and always tear everything down again.
#
#   scripts/stack-test.sh [test]   the whole test (`make stack-test`), stack removed on exit
#   scripts/stack-test.sh images   only build the stack's images
#   scripts/stack-test.sh up       build, start and wait until healthy; leaves the stack running
#   scripts/stack-test.sh down     stop it and remove its volumes and the stacktest replicas
#
# Env: KEEP_STACK=1 leaves the stack running after `test` (for poking at the UI);
#      HEALTH_TIMEOUT (240 s), RUN_TIMEOUT (600 s) bound the waits.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
mode="${1:-test}"
HEALTH_TIMEOUT="${HEALTH_TIMEOUT:-240}"
RUN_TIMEOUT="${RUN_TIMEOUT:-600}"
PY="$root/.venv/bin/python"
DAG_ID=tfserving_resnet
MODEL_NAME=stacktest
LABEL_KEY=tfserving-deploy.source-hash
ca=/etc/ssl/certs/ca-certificates.crt
t0=$SECONDS
declare -a timings=()

log() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
mark() { timings+=("$(printf '%-34s %4d s' "$1" "$2")"); }

# Bookworm ships docker-compose 1.29 (no `docker compose` plugin); take v2 when that is all there is.
if command -v docker-compose >/dev/null; then COMPOSE=(docker-compose)
elif docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose)
else
  log "apt-get install docker-compose"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
  COMPOSE=(docker-compose)
fi
dc() { "${COMPOSE[@]}" "$@"; }

# --- .env: created from .env.example with fresh random secrets, never overwritten ---------------
if [ ! -f .env ]; then
  log "creating .env from .env.example (random secrets)"
  umask 077
  DOCKER_GID=$(stat -c %g /var/run/docker.sock 2>/dev/null || echo 0) "$PY" - <<'PY'
import os, secrets
from cryptography.fernet import Fernet
fresh = {
    "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
    "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
    "POSTGRES_PASSWORD": secrets.token_hex(16),
    "AIRFLOW_ADMIN_PASSWORD": secrets.token_urlsafe(18),
}
fixed = {"DOCKER_GID": os.environ["DOCKER_GID"]}  # this machine's socket group
lines = []
for line in open(".env.example").read().splitlines():
    key, eq, value = line.partition("=")
    if eq and not line.startswith("#") and key in fresh and not value:
        line = f"{key}={fresh[key]}"
    elif eq and not line.startswith("#") and key in fixed:
        line = f"{key}={fixed[key]}"
    lines.append(line)
open(".env", "w").write("\n".join(lines) + "\n")
PY
  umask 022
fi
env_get() {  # env_get KEY DEFAULT: a value from .env (the shell's environment wins, as in compose)
  local v="${!1:-}"
  [ -n "$v" ] || v=$(sed -n "s/^$1=//p" .env | tail -n1)
  v="${v%\"}"; v="${v#\"}"; v="${v%\'}"; v="${v#\'}"
  printf '%s' "${v:-$2}"
}
BASE_IMAGE=$(env_get BASE_IMAGE tfserving-deploy/debian:bookworm)
AIRFLOW_IMAGE=$(env_get AIRFLOW_IMAGE tfserving-deploy/airflow:3.3.2)
POSTGRES_IMAGE=$(env_get POSTGRES_IMAGE tfserving-deploy/postgres:15)
REGISTRY_IMAGE=$(env_get REGISTRY_IMAGE tfserving-deploy/registry:2.8)
AIRFLOW_UID=$(env_get AIRFLOW_UID 50000)
API_PORT=$(env_get AIRFLOW_API_PORT 8080)
REGISTRY_PORT=$(env_get REGISTRY_PORT 5001)
ADMIN_USER=$(env_get AIRFLOW_ADMIN_USER admin)
ADMIN_PASSWORD=$(env_get AIRFLOW_ADMIN_PASSWORD "")
SOCKET=$(env_get DOCKER_SOCKET /var/run/docker.sock)
SERVING_IMAGE="${SERVING_IMAGE:-tfserving-deploy/serving:2.21.0}"
# Where `make images` publishes the serving base on the host (scripts/host-services.sh's registry).
SERVING_BASE_SOURCE="${SERVING_BASE_SOURCE:-127.0.0.1:5000/$SERVING_IMAGE}"
REGISTRY="127.0.0.1:${REGISTRY_PORT}"
API="http://127.0.0.1:${API_PORT}"
# The socket's real group, whatever .env says: the airflow user joins it to drive the engine.
export DOCKER_GID
DOCKER_GID=$(stat -c %g "$SOCKET") || die "Docker socket $SOCKET not found (run \`make services\`)"

# --- images: rebuilt only when their inputs (files + base image id) changed ------------------------
build_image() {  # build_image IMAGE DOCKERFILE [FILE...]: files land in the context by basename
  local image=$1 dockerfile=$2; shift 2
  local base_id hash current ctx start
  base_id=$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null) \
    || die "base image $BASE_IMAGE missing (run \`make images\` or scripts/build-base-image.sh)"
  hash=$({ echo "$base_id uid=$AIRFLOW_UID"; cat "$dockerfile" "$@"; } | sha256sum | cut -c1-16)
  current=$(docker image inspect --format "{{ index .Config.Labels \"$LABEL_KEY\" }}" "$image" 2>/dev/null || true)
  if [ "$current" = "$hash" ]; then
    log "image $image up to date ($hash)"; return 0
  fi
  ctx=$(mktemp -d /var/tmp/stack-image.XXXXXX)
  cp "$dockerfile" "$ctx/Dockerfile"
  [ $# -eq 0 ] || cp "$@" "$ctx/"
  cp "$ca" "$ctx/ca-certificates.crt"
  log "building $image (${current:+stale $current, }source hash $hash)"
  start=$SECONDS
  if ! docker build -q --build-arg BASE="$BASE_IMAGE" --build-arg AIRFLOW_UID="$AIRFLOW_UID" \
       --label "$LABEL_KEY=$hash" -t "$image" "$ctx" >"$ctx.log" 2>&1; then
    tail -n 40 "$ctx.log" >&2; rm -rf "$ctx" "$ctx.log"; die "docker build of $image failed"
  fi
  rm -rf "$ctx" "$ctx.log"
  log "built $image in $((SECONDS - start)) s"
}
build_images() {
  local start=$SECONDS
  [ -r "$ca" ] || die "CA bundle $ca not readable"
  build_image "$POSTGRES_IMAGE" docker/postgres.Dockerfile docker/postgres-entrypoint.sh
  build_image "$REGISTRY_IMAGE" docker/registry.Dockerfile
  # The project's packages (pyproject.toml), as a reproducible tar: same sources, same bytes, same hash.
  local project
  project=$(mktemp -d /var/tmp/stack-project.XXXXXX)/project.tar
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --exclude=__pycache__ -cf "$project" \
    pyproject.toml README.md include/tfserving_deploy include/tfserving_demo plugins/tfserving_airflow
  # About 4 min and 4 GB cold (pip install of the full requirements).
  build_image "$AIRFLOW_IMAGE" docker/airflow.Dockerfile docker/airflow-entrypoint.sh \
    requirements.txt docker/requirements-stack.txt "$project"
  rm -rf "$(dirname "$project")"
  mark "images" $((SECONDS - start))
}

# --- stack lifecycle -----------------------------------------------------------------------------
remove_replicas() {
  local ids
  ids=$(docker ps -aq --filter "label=io.tfserving-deploy.serving-model=$MODEL_NAME";
        docker ps -aq --filter "label=io.tfserving-deploy.candidate-model=$MODEL_NAME")
  [ -z "$ids" ] || docker rm -f $ids >/dev/null
}
stack_down() {
  local start=$SECONDS
  dc down -v --remove-orphans >/dev/null 2>&1 || dc down -v --remove-orphans || true
  remove_replicas
  # The replicas' images (pulled from the stack's registry, which `down -v` just dropped).
  docker images --format '{{.Repository}}:{{.Tag}} {{.ID}}' \
    | awk -v r="$REGISTRY/" 'index($1, r) == 1 {print ($1 ~ /:<none>$/) ? $2 : $1}' \
    | xargs -r docker rmi -f >/dev/null 2>&1 || true
  mark "down -v + cleanup" $((SECONDS - start))
}
service_health() {  # one "service:state" line per service of the project
  local id name state
  for id in $(dc ps -q); do
    name=$(docker inspect --format '{{ index .Config.Labels "com.docker.compose.service" }}' "$id")
    state=$(docker inspect --format '{{ if .State.Health }}{{ .State.Health.Status }}{{ else }}{{ .State.Status }}/{{ .State.ExitCode }}{{ end }}' "$id")
    echo "$name:$state"
  done
}
stack_up() {
  local start=$SECONDS deadline states
  log "docker-compose config -q"
  dc config -q
  log "docker-compose up -d"
  dc up -d
  deadline=$((SECONDS + HEALTH_TIMEOUT))
  while :; do
    states=$(service_health | sort)
    # Healthy: every long-running service healthy and airflow-init exited 0.
    if ! grep -vqE '^(airflow-init:exited/0|[a-z-]+:healthy)$' <<<"$states" \
       && [ "$(grep -c ':healthy$' <<<"$states")" -ge 6 ] \
       && curl -fsS -o /dev/null "$API/api/v2/monitor/health"; then
      break
    fi
    if grep -qE '^airflow-init:exited/[1-9]' <<<"$states"; then
      dc logs --no-color --tail 40 airflow-init >&2; die "airflow-init failed"
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "$states" >&2; dc ps >&2 || true
      dc logs --no-color --tail 25 >&2 || true
      die "the stack was not healthy within ${HEALTH_TIMEOUT}s"
    fi
    sleep 3
  done
  log "stack healthy in $((SECONDS - start)) s: $(tr '\n' ' ' <<<"$states")"
  mark "up -d until all healthy" $((SECONDS - start))
}
publish_serving_base() {
  # The DAG's oci builder reads the serving base from the registry it pushes to (base layers are
  # then mounted, not uploaded). Copy it from the host's registry, where `make images` publishes
  # it: blobs move as they are (about 3 s for 414 MiB); a `docker push` would re-gzip 1.7 GB
  # (over a minute on 2 cores) and is only the fallback.
  local start=$SECONDS how
  log "copying $SERVING_BASE_SOURCE to the stack's registry as $REGISTRY/$SERVING_IMAGE"
  if how=$("$PY" - "$SERVING_BASE_SOURCE" "$REGISTRY/$SERVING_IMAGE" <<'PY'
import sys, tempfile
from pathlib import Path
from tfserving_deploy.oci.registry import RegistryClient, parse_reference

src, dst = (parse_reference(r) for r in sys.argv[1:3])
a, b = RegistryClient(src.host), RegistryClient(dst.host)
kinds = ["application/vnd.docker.distribution.manifest.v2+json", "application/vnd.oci.image.manifest.v1+json"]
pull, push = f"repository:{src.path}:pull", f"repository:{dst.path}:pull,push"
r = a.manifest(src.path, src.tag, kinds, scope=pull, what="copy")
if r is None:
    sys.exit(3)  # not in the source registry: the caller pushes with docker instead
manifest, media_type = r.json(), r.headers["Content-Type"].split(";")[0]
copied = 0
for desc in [manifest["config"]] + manifest["layers"]:
    if b.has_blob(dst.path, desc["digest"], scope=push, what="copy"):
        continue
    with tempfile.NamedTemporaryFile(dir="/var/tmp") as tmp:
        for piece in a.get_blob(src.path, desc["digest"], scope=pull, what="copy").iter_content(1 << 20):
            tmp.write(piece)
        tmp.flush()
        b.upload(dst.path, desc["digest"], Path(tmp.name), desc["size"], chunk_size=64 << 20, scope=push, what="copy")
    copied += desc["size"]
b.put_manifest(dst.path, dst.tag, r.content, media_type, scope=push, what="copy")
print(f"copied {copied >> 20} MiB of blobs")
PY
  ); then
    log "$how"
  else
    [ $? -eq 3 ] || die "copying the serving base to $REGISTRY failed"
    docker image inspect "$SERVING_IMAGE" >/dev/null 2>&1 \
      || die "serving image $SERVING_IMAGE missing (run \`make images\`)"
    log "$SERVING_BASE_SOURCE not found: docker push of $SERVING_IMAGE instead (slow: re-gzips 1.7 GB)"
    docker tag "$SERVING_IMAGE" "$REGISTRY/$SERVING_IMAGE"
    docker push -q "$REGISTRY/$SERVING_IMAGE" >/dev/null
    docker rmi "$REGISTRY/$SERVING_IMAGE" >/dev/null
  fi
  mark "serving base into $REGISTRY" $((SECONDS - start))
}

case "$mode" in
  images) build_images; exit 0 ;;
  down) stack_down; exit 0 ;;
  up) build_images; stack_up; publish_serving_base
      log "stack up: $API (user $ADMIN_USER, password in .env); \`scripts/stack-test.sh down\` removes it"
      exit 0 ;;
  test) ;;
  *) die "usage: $0 [test|images|up|down]" ;;
esac

# --- the test --------------------------------------------------------------------------------------
http_pid=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [ -z "$http_pid" ] || kill "$http_pid" 2>/dev/null || true
  if [ "${KEEP_STACK:-0}" = 1 ]; then
    log "KEEP_STACK=1: stack left running at $API (\`scripts/stack-test.sh down\` removes it)"
  else
    log "tearing down (docker-compose down -v, stacktest replicas)"
    stack_down
  fi
  echo "---- timings ----"
  printf '%s\n' "${timings[@]}"
  printf '%-34s %4d s\n' "total" $((SECONDS - t0))
  if [ $rc -eq 0 ]; then log "stack test PASSED"; else log "stack test FAILED (exit $rc)"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ -x "$PY" ] || die "$PY missing (run \`make venv\`)"
[ -n "$ADMIN_PASSWORD" ] || die "AIRFLOW_ADMIN_PASSWORD is empty in .env"

# On a fresh DB, unpausing a DAG whose CronTriggerTimetable has catchup=False creates a run for
# the latest past cron point at once (default params: the tutorial URL, unreachable here), and
# max_active_runs=1 holds our run behind it. For the test, a cron whose next point lies in the
# future (Feb 29) keeps the REST-triggered run the only one.
export TFSERVING_RESNET_REFRESH_CRON="${STACK_TEST_CRON:-0 0 29 2 *}"

build_images
log "removing leftovers of an earlier run"
dc down -v --remove-orphans >/dev/null 2>&1 || true
remove_replicas
stack_up
publish_serving_base

start=$SECONDS
tarball="$root/build/demo/resnet_demo_savedmodel.tar.gz"
log "demo model $tarball"
"$PY" -m tfserving_demo --out "$tarball"
http_port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$PY" -m http.server --bind 127.0.0.1 --directory "$(dirname "$tarball")" "$http_port" >/dev/null 2>&1 &
http_pid=$!
for _ in $(seq 50); do curl -fs -o /dev/null -I "http://127.0.0.1:$http_port/$(basename "$tarball")" && break; sleep 0.2; done
mark "demo model + http server" $((SECONDS - start))

start=$SECONDS
export API ADMIN_USER ADMIN_PASSWORD DAG_ID RUN_TIMEOUT
export MODEL_URL="http://127.0.0.1:$http_port/$(basename "$tarball")"
export SERVING_BASE="$REGISTRY/$SERVING_IMAGE" IMAGE_REPOSITORY="$REGISTRY/stacktest-serving" MODEL_NAME
"$PY" - <<'PY'
"""Drive the run through the public REST API v2 with a JWT from the simple auth manager."""
import os, sys, time
import requests

api, dag_id = os.environ["API"], os.environ["DAG_ID"]
s = requests.Session()


def call(method, path, expect=(200,), **kw):
    r = s.request(method, api + path, timeout=30, **kw)
    if r.status_code not in expect:
        sys.exit(f"error: {method} {path} -> HTTP {r.status_code}: {r.text[:500]}")
    return r


r = call("POST", "/auth/token", expect=(200, 201),
         json={"username": os.environ["ADMIN_USER"], "password": os.environ["ADMIN_PASSWORD"]})
s.headers["Authorization"] = "Bearer " + r.json()["access_token"]
print("==> got a JWT from POST /auth/token", flush=True)

deadline = time.monotonic() + 120  # the dag-processor's first parse
while True:
    r = s.get(f"{api}/api/v2/dags/{dag_id}", timeout=30)
    if r.status_code == 200:
        break
    errors = call("GET", "/api/v2/importErrors").json().get("import_errors", [])
    if errors or time.monotonic() > deadline:
        for e in errors:
            print(f"--- import error in {e.get('filename')}:\n{e.get('stack_trace')}", file=sys.stderr)
        sys.exit(f"error: DAG {dag_id} not parsed (HTTP {r.status_code}) within 120 s")
    time.sleep(2)
call("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
conf = {
    "model_url": os.environ["MODEL_URL"],
    "serving_base_image": os.environ["SERVING_BASE"],
    "image_repository": os.environ["IMAGE_REPOSITORY"],
    "model_name": os.environ["MODEL_NAME"],
    "replicas": 2,
    "expected_class": 286,
}
run = call("POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf}).json()
run_id = run["dag_run_id"]
print(f"==> triggered {dag_id} run {run_id} (unpaused) with {conf}", flush=True)

started, seen = time.monotonic(), {}
timeout = float(os.environ["RUN_TIMEOUT"])
while True:
    state = call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json()["state"]
    tis = call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
    for ti in tis:
        if ti["state"] and seen.get(ti["task_id"]) != ti["state"]:
            seen[ti["task_id"]] = ti["state"]
            print(f"    {time.monotonic() - started:6.1f}s  {ti['task_id']:<20} {ti['state']}", flush=True)
    if state in ("success", "failed") or time.monotonic() - started > timeout:
        break
    time.sleep(3)

order = {t: i for i, t in enumerate(["check_for_change", "fetch_model", "build_image", "push_image", "ensure_cluster",
                                     "start_candidate", "validate_candidate", "stop_candidate", "deploy",
                                     "wait_for_endpoint", "validate"])}
print(f"==> run {run_id}: {state} after {time.monotonic() - started:.0f} s")
for ti in sorted(tis, key=lambda t: order.get(t["task_id"], 99)):
    print(f"    {ti['task_id']:<20} {str(ti['state']):<16} try {ti['try_number']}  "
          f"{(ti.get('duration') or 0):6.1f} s")
others = [r["dag_run_id"] for r in call("GET", f"/api/v2/dags/{dag_id}/dagRuns").json()["dag_runs"] if r["dag_run_id"] != run_id]
if others:
    print(f"warning: other runs of {dag_id} in this stack: {others}", file=sys.stderr)
if state == "success":
    sys.exit(0)
bad = [ti for ti in tis if ti["state"] in ("failed", "up_for_retry", "running", "deferred", "queued")]
for ti in bad:
    r = s.get(f"{api}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/logs/{max(ti['try_number'], 1)}",
              params={"full_content": "true"}, headers={"Accept": "application/json"}, timeout=60)
    content = r.json().get("content") if r.ok else r.text
    lines = []
    for entry in content if isinstance(content, list) else str(content).splitlines():
        if isinstance(entry, dict):
            extra = " ".join(f"{k}={v}" for k, v in entry.items() if k not in ("event", "timestamp", "level", "logger"))
            lines.append(f"{entry.get('timestamp', '')} {entry.get('level', '')} {entry.get('event', '')} {extra}".rstrip())
        else:
            lines.append(str(entry))
    print(f"---- log tail of {ti['task_id']} (try {ti['try_number']}, {ti['state']}) ----", file=sys.stderr)
    print("\n".join(lines[-40:]), file=sys.stderr)
sys.exit(f"error: run {run_id} ended {state}" if state == "failed" else f"error: run {run_id} still {state} after {timeout:.0f} s")
PY
mark "DAG run via REST (trigger..success)" $((SECONDS - start))

# What the run must have left behind: the replicas, and lineage events in the file transport.
replicas=$(docker ps -q --filter "label=io.tfserving-deploy.serving-model=$MODEL_NAME" --filter status=running | wc -l)
[ "$replicas" -eq 2 ] || die "expected 2 running $MODEL_NAME replicas, found $replicas"
log "$replicas $MODEL_NAME replicas running: $(docker ps --filter "label=io.tfserving-deploy.serving-model=$MODEL_NAME" --format '{{.Names}} {{.Ports}}' | tr '\n' ';')"
# The lineage chain model -> image -> endpoint, as OpenLineage COMPLETE events (file transport).
dc exec -T scheduler python - "$REGISTRY" "$MODEL_NAME" <<'PY' || die "OpenLineage events incomplete"
import json, sys
registry, model = sys.argv[1:3]
outputs = {}
for line in open("/opt/airflow/logs/openlineage/events.jsonl"):
    e = json.loads(line)
    if e["eventType"] == "COMPLETE":
        outputs.setdefault(e["job"]["name"].split(".")[-1], []).extend(
            f"{d['namespace']}/{d['name']}" for d in e.get("outputs", []))
want = {"fetch_model": "http://127.0.0.1:", "push_image": f"oci://{registry}/stacktest-serving@sha256:",
        "deploy": f"tfserving://local/{model}"}
missing = [f"{task} -> {prefix}..." for task, prefix in want.items()
           if not any(o.startswith(prefix) for o in outputs.get(task, []))]
if missing:
    sys.exit(f"error: no OpenLineage COMPLETE event with output {', '.join(missing)}")
for task in want:
    print(f"==> OpenLineage: {task} -> {outputs[task][0]}")
PY
