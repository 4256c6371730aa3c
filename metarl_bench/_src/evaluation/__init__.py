"""Layer 3: cells (CellConfig), evaluate, the results store, sweeps and terminal tables."""
