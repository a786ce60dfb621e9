"""Layers shared by the model families: norms, rotary embeddings, attention over a caller-owned KV cache, MLPs,
the CLIP vision transformer."""
