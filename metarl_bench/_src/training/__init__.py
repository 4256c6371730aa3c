"""Layer 4: meta-training with any estimator, and its crash-safe log and checkpoint."""
