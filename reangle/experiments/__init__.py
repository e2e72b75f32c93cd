"""Experiments: benchmark manifests, sweeps (W&B format, run offline or by W&B agents),
trials run as their own processes, and the results tables and plots."""
