#!/bin/sh
# Entrypoint of the stack's Airflow image: seeds the simple auth manager's password file from the
# environment (so the REST API can be called with a known password), then runs the command.
set -eu
file="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-}"
if [ -n "${AIRFLOW_ADMIN_PASSWORD:-}" ] && [ -n "$file" ]; then
  # {"<user>": "<password>"}: the format SimpleAuthManager reads; it generates none for listed users.
  python3 - "$file" <<'PY'
import json, os, sys
path = sys.argv[1]
os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as f:
    json.dump({os.environ.get("AIRFLOW_ADMIN_USER", "admin"): os.environ["AIRFLOW_ADMIN_PASSWORD"]}, f)
    f.write("\n")
PY
fi
exec "$@"
