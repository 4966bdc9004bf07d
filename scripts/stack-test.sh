#!/usr/bin/env bash
# The compose stack, end to end: build the images (skipped when up to date), start the stack
# (CeleryExecutor, two workers, the model server), run the stack tests (tests/stack: the form's
# defaults on two workers, the UI in headless Chromium, a backfill, Asset events) against it, and
# always tear everything down again.
#
#   scripts/stack-test.sh [test]   the whole test (`make stack-test`), stack removed on exit
#   scripts/stack-test.sh images   only build the stack's images
#   scripts/stack-test.sh up       build, start and wait until healthy; leaves the stack running
#   scripts/stack-test.sh down     stop it and remove its volumes and the stacktest replicas
#
# Env: KEEP_STACK=1 leaves the stack running after `test` (for poking at the UI);
#      HEALTH_TIMEOUT (300 s), RUN_TIMEOUT (600 s per run) bound the waits;
#      PYTEST_ARGS (e.g. "-k backfill") narrows the stack tests.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
mode="${1:-test}"
HEALTH_TIMEOUT="${HEALTH_TIMEOUT:-300}"
RUN_TIMEOUT="${RUN_TIMEOUT:-600}"
PY="$root/.venv/bin/python"
DAG_ID=tfserving_resnet
# The stack test's models are all named stacktest*: their replicas share the host's engine with
# `make demo`'s `resnet` ones, which the test must never touch.
MODEL_PREFIX=stacktest
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

# --- .env: created from .env.example with fresh random secrets; an existing one is never --------
# overwritten, only completed: a secret it lacks (an .env from before the secret existed) is added.
if [ ! -f .env ]; then
  log "creating .env from .env.example (random secrets)"
  cp .env.example .env && chmod 600 .env
fi
umask 077
DOCKER_GID=$(stat -c %g /var/run/docker.sock 2>/dev/null || echo 0) "$PY" - <<'PY'
import os, secrets
from cryptography.fernet import Fernet
fresh = {  # hex and urlsafe only: they go into URLs (the broker's) and JSON (the registry connection)
    "AIRFLOW__CORE__FERNET_KEY": lambda: Fernet.generate_key().decode(),
    "AIRFLOW__API_AUTH__JWT_SECRET": lambda: secrets.token_hex(32),
    "POSTGRES_PASSWORD": lambda: secrets.token_hex(16),
    "AIRFLOW_ADMIN_PASSWORD": lambda: secrets.token_urlsafe(18),
    "REDIS_PASSWORD": lambda: secrets.token_hex(24),
    "REGISTRY_PASSWORD": lambda: secrets.token_hex(24),
}
fixed = {"DOCKER_GID": os.environ["DOCKER_GID"]}  # this machine's socket group
lines, seen = [], set()
for line in open(".env").read().splitlines():
    key, eq, value = line.partition("=")
    if eq and not line.startswith("#"):
        seen.add(key)
        if key in fresh and not value:
            line = f"{key}={fresh[key]()}"
        elif key in fixed:
            line = f"{key}={fixed[key]}"
    lines.append(line)
added = [key for key in fresh if key not in seen]
if added:
    print(f"==> adding {', '.join(added)} to .env (random)")
    lines += [f"{key}={fresh[key]()}" for key in added]
open(".env", "w").write("\n".join(lines) + "\n")
PY
umask 022
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
REDIS_IMAGE=$(env_get REDIS_IMAGE tfserving-deploy/redis:7)
AIRFLOW_UID=$(env_get AIRFLOW_UID 50000)
API_PORT=$(env_get AIRFLOW_API_PORT 8080)
REGISTRY_PORT=$(env_get REGISTRY_PORT 5001)
REGISTRY_USER=$(env_get REGISTRY_USER tfsd)
REDIS_PORT=$(env_get REDIS_PORT 6380)
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
  build_image "$REGISTRY_IMAGE" docker/registry.Dockerfile docker/registry-entrypoint.sh
  build_image "$REDIS_IMAGE" docker/redis.Dockerfile docker/redis-entrypoint.sh
  # The project's packages (pyproject.toml), as a reproducible tar: same sources, same bytes, same hash.
  local project
  project=$(mktemp -d /var/tmp/stack-project.XXXXXX)/project.tar
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --exclude=__pycache__ -cf "$project" \
    pyproject.toml README.md include/tfserving_deploy plugins/tfserving_airflow
  # About 4 min and 4 GB cold (pip install of the full requirements).
  build_image "$AIRFLOW_IMAGE" docker/airflow.Dockerfile docker/airflow-entrypoint.sh \
    requirements.txt docker/requirements-stack.txt "$project"
  rm -rf "$(dirname "$project")"
  mark "images" $((SECONDS - start))
}

# --- stack lifecycle -----------------------------------------------------------------------------
remove_replicas() {  # serving replicas and candidates of the stacktest* models, nothing else
  local ids
  ids=$(docker ps -a --format '{{.ID}}|{{.Label "io.tfserving-deploy.serving-model"}}|{{.Label "io.tfserving-deploy.candidate-model"}}' \
        | awk -F'|' -v p="$MODEL_PREFIX" 'index($2, p) == 1 || index($3, p) == 1 {print $1}')
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
    if ! grep -vqE '^(airflow-init:exited/0|[a-z0-9-]+:healthy)$' <<<"$states" \
       && [ "$(grep -c ':healthy$' <<<"$states")" -ge 10 ] \
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
  # The stack's registry wants its user's password: in the environment of this one command only.
  if how=$(STACK_REGISTRY_USER="$REGISTRY_USER" STACK_REGISTRY_PASSWORD="$(env_get REGISTRY_PASSWORD "")" \
           "$PY" - "$SERVING_BASE_SOURCE" "$REGISTRY/$SERVING_IMAGE" <<'PY'
import os, sys, tempfile
from pathlib import Path
from tfserving_deploy.image.oci.registry import RegistryAuth, RegistryClient
from tfserving_deploy.image.references import parse_reference

src, dst = (parse_reference(r) for r in sys.argv[1:3])
auth = RegistryAuth(os.environ["STACK_REGISTRY_USER"], os.environ["STACK_REGISTRY_PASSWORD"])
a, b = RegistryClient(src.host), RegistryClient(dst.host, auth)
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
    env_get REGISTRY_PASSWORD "" | docker login -u "$REGISTRY_USER" --password-stdin "$REGISTRY" >/dev/null
    docker push -q "$REGISTRY/$SERVING_IMAGE" >/dev/null
    docker logout "$REGISTRY" >/dev/null
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
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ $rc -ne 0 ]; then
    log "service log tails (docker-compose logs)"
    dc logs --no-color --tail 30 scheduler worker-1 worker-2 model-server 2>&1 | tail -n 120 >&2 || true
  fi
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

# The UI test's browser: Debian's Chromium (Playwright's own browser download cannot work here),
# driven by the venv's playwright (requirements-dev.txt).
if [ ! -x /usr/bin/chromium ]; then
  log "apt-get install chromium (the UI test's headless browser)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
"$PY" -c 'import playwright' 2>/dev/null || die "playwright missing in .venv (run \`make venv\`)"

# The stack as a user runs it (daily refresh cron, the form's defaults from the environment), but
# with the stacktest model name, so its replicas never touch `make demo`'s `resnet` ones.
export TFSERVING_RESNET_MODEL_NAME="$MODEL_PREFIX"

build_images
log "removing leftovers of an earlier run"
dc down -v --remove-orphans >/dev/null 2>&1 || true
remove_replicas
stack_up
publish_serving_base

start=$SECONDS
artifacts="$root/.artifacts/stack"
rm -rf "$artifacts" && mkdir -p "$artifacts"
log "stack tests (tests/stack; screenshots and timings in ${artifacts#"$root/"})"
STACK_API="$API" STACK_ADMIN_USER="$ADMIN_USER" STACK_ADMIN_PASSWORD="$ADMIN_PASSWORD" \
STACK_REGISTRY="$REGISTRY" STACK_REGISTRY_USER="$REGISTRY_USER" STACK_REGISTRY_PASSWORD="$(env_get REGISTRY_PASSWORD "")" \
STACK_REDIS="127.0.0.1:$REDIS_PORT" STACK_REDIS_PASSWORD="$(env_get REDIS_PASSWORD "")" \
STACK_MODEL_SERVER="http://127.0.0.1:$(env_get MODEL_SERVER_PORT 8090)" \
STACK_ARTIFACTS="$artifacts" STACK_COMPOSE="${COMPOSE[*]}" RUN_TIMEOUT="$RUN_TIMEOUT" \
  "$PY" -m pytest -p no:cacheprovider -v -s --rootdir "$root" tests/stack ${PYTEST_ARGS:-}
mark "stack tests (tests/stack)" $((SECONDS - start))
