"""Cameras, trajectories, depth estimation and z-buffered splatting."""
