"""The bottom layer: errors, argument validation, seeded draws, trajectories, statistics, the registries, resource estimates and progress."""
