"""Stage 4, validation: the answers of a deployed model checked against what the same SavedModel
computes offline (``checks``), its signature against what served before (``compatibility``), and
whether one client's channel reaches every replica (``balance``).
"""
