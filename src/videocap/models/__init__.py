"""Model families (one sub-package each) and the layers they share. Model code holds no generation loop and
allocates no KV cache: the engine owns both."""
