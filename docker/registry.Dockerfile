# An OCI registry from Debian's docker-registry package (distribution 2.8), for the stack's images
# (no Docker Hub here). htpasswd auth: one user, whose bcrypt entry registry-entrypoint.sh writes
# at start from the password generated into .env, so pulls and pushes need it; no TLS (published on
# 127.0.0.1 only), and no deletes: nothing in the stack deletes images, so nobody gets to.
ARG BASE=tfserving-deploy/debian:bookworm
FROM ${BASE}

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends docker-registry curl apache2-utils \
 && apt-get clean && rm -rf /var/lib/apt/lists/*

# Debian's default config wants htpasswd auth with a password file it does not ship: replace it.
RUN printf '%s\n' \
      'version: 0.1' \
      'log:' \
      '  level: warn' \
      '  accesslog:' \
      '    disabled: true' \
      'storage:' \
      '  filesystem:' \
      '    rootdirectory: /var/lib/docker-registry' \
      '  delete:' \
      '    enabled: false' \
      'http:' \
      '  addr: :5000' \
      'auth:' \
      '  htpasswd:' \
      '    realm: tfserving-stack' \
      '    path: /etc/docker/registry/auth/htpasswd' \
      > /etc/docker/registry/config.yml \
 && mkdir -p /var/lib/docker-registry /etc/docker/registry/auth \
 && chown docker-registry: /var/lib/docker-registry /etc/docker/registry/auth \
 && chmod 700 /etc/docker/registry/auth

COPY registry-entrypoint.sh /usr/local/bin/registry-entrypoint
USER docker-registry
VOLUME /var/lib/docker-registry
EXPOSE 5000
ENTRYPOINT ["/usr/local/bin/registry-entrypoint"]
