# The project's image: fl_core, the DAGs and plugins, Airflow, MLflow, DVC (CPU torch).
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 FL_HOME=/var/lib/fl \
    AIRFLOW_HOME=/var/lib/fl/airflow PYTHONPATH=/opt/fl/plugins
WORKDIR /opt/fl
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
COPY requirements.lock pyproject.toml README.md ./
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install -r requirements.lock \
 && pip install apache-airflow-providers-celery psycopg2-binary dvc-s3
COPY fl_core ./fl_core
RUN pip install --no-deps -e .
COPY dags ./dags
COPY plugins ./plugins
COPY params.yaml dvc.yaml ./
