"""Airflow-side helpers of nightshift: the partition sensor and trigger, run-time settings, the plugin's API."""
