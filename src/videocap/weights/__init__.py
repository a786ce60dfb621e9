"""Checkpoints: Hub ids, aliases, download and cache (hub.py); building models from safetensors (loader.py)."""
