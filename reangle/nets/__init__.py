"""Checkpoint-compatible PyTorch ports of networks that no installed package provides."""
