"""Pure Flax Linen model definitions; no training, mesh or flag code lives here."""
