"""Training videocap's own models: synthetic "shapes" videos, their captions and facts, the evaluation protocol,
the tiny model's tokenizer and preset, and the training loop (full or LoRA) that writes llava-hf checkpoints."""
