"""reangle: synchronized multi-view videos of one scene from a single video (Reangle-A-Video)."""

__version__ = "0.1.0"
