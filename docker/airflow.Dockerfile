# The Airflow image of the compose stack (docker-compose.yaml): Airflow 3.3 + the providers and the
# TF Serving client from requirements.txt, on the local Debian base (no Docker Hub here).
# Built by scripts/stack-test.sh from a small context: this file, airflow-entrypoint.sh,
# requirements.txt, docker/requirements-stack.txt, the project's sources (project.tar) and the host's
# CA bundle. The stack mounts dags/, plugins/, include/ (the validation photos) and demo/dags (the
# publisher DAG, a second DAG bundle) from the checkout; the model server mounts demo/ for tfserving_demo.
ARG BASE=tfserving-deploy/debian:bookworm
FROM ${BASE}

ARG DEBIAN_FRONTEND=noninteractive
# Debian bookworm's python3 is 3.11; tini reaps the LocalExecutor's children; curl for health checks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates curl tini \
 && apt-get clean && rm -rf /var/lib/apt/lists/*

# pip reaches PyPI only through the host's CA bundle (it holds the proxy's CA).
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt

# Fixed UID (the official image's 50000), group 0 like the official image.
ARG AIRFLOW_UID=50000
ENV AIRFLOW_HOME=/opt/airflow
RUN useradd --uid "${AIRFLOW_UID}" --gid 0 --home-dir "${AIRFLOW_HOME}" --create-home --shell /bin/bash airflow \
 && mkdir -p "${AIRFLOW_HOME}/dags" "${AIRFLOW_HOME}/plugins" "${AIRFLOW_HOME}/include" \
             "${AIRFLOW_HOME}/logs/openlineage" "${AIRFLOW_HOME}/cache" \
 && chown -R airflow:0 "${AIRFLOW_HOME}" && chmod -R g+rwX "${AIRFLOW_HOME}"

# The slow layer (about 4 min, 4 GB): only requirements changes invalidate it.
COPY requirements.txt requirements-stack.txt /tmp/requirements/
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
      -r /tmp/requirements/requirements.txt -r /tmp/requirements/requirements-stack.txt \
 && /opt/venv/bin/pip check \
 && rm -rf /tmp/requirements /root/.cache

# The project's packages (the library and the Airflow glue; not the demo): pyproject.toml.
COPY project.tar /tmp/
RUN mkdir /tmp/project && tar -xf /tmp/project.tar -C /tmp/project \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps /tmp/project \
 && rm -rf /tmp/project /tmp/project.tar /root/.cache

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TFSERVING_DEPLOY_CACHE=/opt/airflow/cache

COPY airflow-entrypoint.sh /usr/local/bin/airflow-entrypoint
USER airflow
WORKDIR /opt/airflow
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/airflow-entrypoint"]
CMD ["airflow", "version"]
