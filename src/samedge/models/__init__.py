"""Models, one file each (flax.linen modules). Import the one you need: ``samedge.models.mlp``."""
