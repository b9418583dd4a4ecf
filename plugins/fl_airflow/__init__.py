"""Airflow integration of fl_core: hooks (artifact store, MLflow), the collect sensor, the
plugin, and the embedded runner used by ``make run``."""
