"""The LLaVA-NeXT family (ShareGPT4Video-8B): CLIP ViT + mlp2x_gelu projector + Llama decoder, anyres tiling."""
