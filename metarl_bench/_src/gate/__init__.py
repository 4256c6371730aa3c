"""The regression gate (``metarl-bench check``): statistics, time and memory of this tree against a baseline commit."""
