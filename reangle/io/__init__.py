"""Video and image input/output and the synthetic scene."""
