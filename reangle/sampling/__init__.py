"""Multi-view video sampling with the fine-tuned image-to-video model (CogVideoX or Wan).

``plan`` picks the views, their start frames and seeds; ``shard`` splits them over
ranks; ``sampler`` (CogVideoX) and ``wan`` make the videos; ``outputs`` writes them; ``multiview`` ties the
four together for ``sample.py`` and the sampling callback.
"""
