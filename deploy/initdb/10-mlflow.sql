-- A second database on the same PostgreSQL for MLflow's tracking store and registry.
CREATE DATABASE mlflow OWNER airflow;
