"""Compression: pruning, quantization, low-rank factorization, distillation."""
