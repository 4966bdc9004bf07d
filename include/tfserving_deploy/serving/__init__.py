"""The TF Serving protocol, spoken by every stage above it: its messages (``protos``), a model's
serving ``signature`` and the ``requests`` built from it, the gRPC ``client`` and model ``status``,
the replicas' Prometheus ``metrics``, the server's flags (``server_config``) and replica ``sizing``.

The protobuf rule: the library builds the few messages it reads or writes from descriptors in
``protos`` (importing ``tensorflow_serving.apis`` pulls in all of TensorFlow, about 5 s, on every
status poll and in the triggerer). Only the gRPC ``client``'s Predict/metadata stubs come from
``tensorflow_serving.apis``, imported lazily in the tasks that already load TensorFlow to compute
the reference answer; ``tests/test_protos.py`` checks the two agree byte for byte.
"""
