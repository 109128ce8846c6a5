"""The demo model's dataset generator, training script and evaluation (see docs/demo-model.md)."""
