"""Layer 4: figures, the HTML report and the published reproductions, drawn from results."""
