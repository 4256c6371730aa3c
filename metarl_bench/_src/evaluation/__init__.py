"""Evaluation of estimators on tasks: cells, the crash-safe results store and sweeps; imports ``core``, ``tasks`` and ``estimators``."""
