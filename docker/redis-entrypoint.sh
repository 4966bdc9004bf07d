#!/bin/sh
# Entrypoint of the stack's redis (the Celery broker): every client must AUTH with REDIS_PASSWORD
# (generated into .env by scripts/stack-test.sh). The password reaches redis-server through a
# config file only this user can read, never its command line (which `ps` shows every local user);
# without one it refuses to start rather than run an open broker.
set -eu
: "${REDIS_PASSWORD:?REDIS_PASSWORD is not set: run scripts/stack-test.sh, which generates it into .env}"
umask 077
conf=$(mktemp /tmp/redis.XXXXXX.conf)
printf 'requirepass %s\n' "$REDIS_PASSWORD" >"$conf"
unset REDIS_PASSWORD
exec /usr/bin/redis-server "$conf" --bind 0.0.0.0 --port 6379 --protected-mode no \
  --save "" --appendonly no --dir /tmp
