"""fl_core: federated learning for lightweight models, usable without Airflow.

The package does nothing at import time; heavy dependencies (torch, mlflow, great_expectations)
are imported by the modules that need them.
"""

__version__ = "0.1.0"
