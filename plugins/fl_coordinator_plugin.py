"""Registers the FL coordinator plugin with Airflow (``plugins/.airflowignore`` hides the
``fl_airflow`` package from the plugin scan; Airflow puts this folder on ``sys.path``)."""

from fl_airflow.coordinator import FlCoordinatorPlugin

__all__ = ["FlCoordinatorPlugin"]
