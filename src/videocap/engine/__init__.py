"""The inference engine: requests in, tokens out. It knows nothing of video or tokenization."""
