# Redis from Debian's own package: the Celery broker of the compose stack (no Docker Hub here).
# A broker only: no persistence (a restart loses queued messages; the scheduler re-queues tasks
# whose messages were lost), protected mode off because the port is published on 127.0.0.1 only.
ARG BASE=tfserving-deploy/debian:bookworm
FROM ${BASE}

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && apt-get clean && rm -rf /var/lib/apt/lists/*

USER redis
EXPOSE 6379
ENTRYPOINT ["/usr/bin/redis-server", "--bind", "0.0.0.0", "--port", "6379", "--protected-mode", "no", \
            "--save", "", "--appendonly", "no", "--dir", "/tmp"]
