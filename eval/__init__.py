"""Evaluation of sampled videos: VBench dimensions, MEt3R, FID, FVD (``python -m eval``).

One module per metric (formulas: tensors in, numbers out), the metric registry
(:mod:`eval.registry`), the evaluation of a set of videos on one or more ranks
(:mod:`eval.evaluate`) and of a run directory (:mod:`eval.run`). Imports ``reangle``;
``reangle`` never imports it.
"""
