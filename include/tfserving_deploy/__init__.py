"""Ship TensorFlow Serving models: fetch, verify, bake into an image, deploy, validate.

Plain Python, no Airflow imports: the Airflow operators in ``plugins/`` are thin wrappers.
"""
