"""Stage 2, the image: the model baked into a serving image and published, either through a Docker
engine (``docker_builder``, the tutorial's way) or daemonless over the registry API (``oci``), with
warmup requests baked in; image ``references`` are parsed by one grammar for every caller.
"""
