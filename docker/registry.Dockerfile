# An OCI registry from Debian's docker-registry package (distribution 2.8), for the stack's images
# (no Docker Hub here). No auth, no TLS (published on 127.0.0.1 only), and no deletes: nothing in the
# stack deletes images, so nobody gets to.
ARG BASE=tfserving-deploy/debian:bookworm
FROM ${BASE}

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends docker-registry curl \
 && apt-get clean && rm -rf /var/lib/apt/lists/*

# Debian's default config wants htpasswd auth without a password file: replace it.
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
      > /etc/docker/registry/config.yml \
 && mkdir -p /var/lib/docker-registry && chown docker-registry: /var/lib/docker-registry

USER docker-registry
VOLUME /var/lib/docker-registry
EXPOSE 5000
ENTRYPOINT ["/usr/bin/docker-registry", "serve", "/etc/docker/registry/config.yml"]
