"""Meta-training with any estimator (``train``) and its crash-safe log and checkpoint (``state``)."""
