# The project's image: fl_core, the DAGs and plugins, Airflow (Celery executor, FAB auth
# manager, PostgreSQL drivers), MLflow and DVC, CPU torch. Every package comes from
# requirements.lock (exact pins, pip check clean); nothing is installed unpinned after it.
FROM python:3.11.10-slim-bookworm

ARG FL_UID=50000
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    FL_HOME=/var/lib/fl \
    FL_PROJECT_ROOT=/opt/fl \
    AIRFLOW_HOME=/var/lib/fl/airflow \
    PYTHONPATH=/opt/fl/plugins:/opt/fl \
    GIT_PYTHON_REFRESH=quiet

WORKDIR /opt/fl
RUN apt-get update \
 && apt-get install -y --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/*

COPY requirements.lock pyproject.toml README.md ./
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install -r requirements.lock \
 && pip check

COPY fl_core ./fl_core
RUN pip install --no-deps -e .
COPY dags ./dags
COPY plugins ./plugins
COPY params.yaml dvc.yaml ./

# Not root: the services run as an unprivileged user that owns only FL_HOME.
RUN useradd --uid "${FL_UID}" --gid 0 --home-dir /var/lib/fl --no-create-home fl \
 && mkdir -p /var/lib/fl/airflow \
 && chown -R "${FL_UID}:0" /var/lib/fl \
 && chmod -R g+rwX /var/lib/fl
USER ${FL_UID}
VOLUME ["/var/lib/fl"]
