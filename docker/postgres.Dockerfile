# PostgreSQL 15 from Debian's own package, for the stack's Airflow metadata DB (no Docker Hub here).
# Contract like the official postgres image: POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB,
# data in /var/lib/postgresql/data (a volume), first start runs initdb.
ARG BASE=tfserving-deploy/debian:bookworm
FROM ${BASE}

ARG DEBIAN_FRONTEND=noninteractive
# No default "main" cluster: the entrypoint makes its own in $PGDATA.
RUN mkdir -p /etc/postgresql-common \
 && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf \
 && apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 \
 && apt-get clean && rm -rf /var/lib/apt/lists/*

ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
RUN mkdir -p "$PGDATA" /run/postgresql \
 && chown -R postgres:postgres "$PGDATA" /run/postgresql && chmod 700 "$PGDATA"

COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
USER postgres
VOLUME /var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint"]
