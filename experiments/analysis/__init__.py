"""Scaling-law fits of a sweep or a CSV of points: Chinchilla's three approaches, and figures."""
