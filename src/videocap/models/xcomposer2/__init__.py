"""InternLM-XComposer2-4KHD (ShareCaptioner-Video): InternLM2 decoder with Partial LoRA, 336 px HD vision."""
