"""Airflow glue for the ``tfserving_deploy`` library: thin operators, sensors and hook wiring.

A worker marks every stderr line of a task as ERROR: the native libraries' log levels are set
here, before any task, sensor or trigger imports gRPC or TensorFlow (both read them once, at load).
"""

from tfserving_deploy.native_logs import quiet_native_logs

quiet_native_logs()
