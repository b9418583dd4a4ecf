"""Triggers (run in Airflow's triggerer, holding no worker slot)."""
