# Redis from Debian's own package: the Celery broker of the compose stack (no Docker Hub here).
# A broker only: no persistence (a restart loses queued messages; the scheduler re-queues tasks
# whose messages were lost). Every client must AUTH: redis-entrypoint.sh sets `requirepass` from
# REDIS_PASSWORD (generated into .env); the port is published on 127.0.0.1 only.
ARG BASE=tfserving-deploy/debian:bookworm
FROM ${BASE}

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && apt-get clean && rm -rf /var/lib/apt/lists/*

COPY redis-entrypoint.sh /usr/local/bin/redis-entrypoint
USER redis
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/redis-entrypoint"]
