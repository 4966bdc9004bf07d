"""Stage 1, the model: a tarball fetched from an allowed URL, pinned by sha256, unpacked without
leaving its root, its SavedModel signature read without TensorFlow (``artifact`` ties it together).
"""
