"""Layer 0: errors, argument checks, draws, trajectories, statistics, registries, files, guards."""
