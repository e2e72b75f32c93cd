"""Lightning callbacks of the reangle pipeline."""
