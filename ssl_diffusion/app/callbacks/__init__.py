"""Lightning callbacks that the engine adds to training runs (in-training FID)."""
