"""Meshes, logical-axis rules and placement helpers. Knows mesh axes, never a model."""
