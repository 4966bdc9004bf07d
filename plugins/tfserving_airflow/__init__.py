"""Airflow glue for the ``tfserving_deploy`` library: thin operators, sensors and hook wiring."""
