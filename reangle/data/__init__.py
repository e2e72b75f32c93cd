"""Omega (the warped training set) on disk, latent masks and the data module."""
