#!/bin/sh
# Entrypoint of the stack's registry: htpasswd auth (bcrypt) for the one user AUTH_USER with
# AUTH_PASSWORD (generated into .env by scripts/stack-test.sh), so no local user can push over
# the serving base image. The password goes to htpasswd on stdin, never on a command line; the
# registry itself never sees it (distribution reads REGISTRY_* variables, and these are unset).
# Without one it refuses to start rather than run an open registry.
set -eu
: "${AUTH_USER:?AUTH_USER is not set: run scripts/stack-test.sh, which writes REGISTRY_USER into .env}"
: "${AUTH_PASSWORD:?AUTH_PASSWORD is not set: run scripts/stack-test.sh, which generates REGISTRY_PASSWORD into .env}"
umask 077
printf '%s\n' "$AUTH_PASSWORD" | htpasswd -niB "$AUTH_USER" >/etc/docker/registry/auth/htpasswd
unset AUTH_USER AUTH_PASSWORD
exec /usr/bin/docker-registry serve /etc/docker/registry/config.yml
