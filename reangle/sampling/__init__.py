"""Multi-view video sampling with the fine-tuned CogVideoX I2V model.

``plan`` picks the views, their start frames and seeds; ``shard`` splits them over
ranks; ``sampler`` makes the videos; ``outputs`` writes them; ``multiview`` ties the
four together for ``sample.py`` and the sampling callback.
"""
