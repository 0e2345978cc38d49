"""Low-level array operations shared by the models (no Flax modules here)."""
