"""Layer 5: the regression gate (metarl-bench check) against a baseline tree or saved suite."""
