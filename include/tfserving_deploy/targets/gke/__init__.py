"""GKE: not a target of its own, but a cluster made sure of (``cluster``) before the ``kubernetes``
target deploys to it."""
