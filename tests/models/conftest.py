"""Fixtures for model tests: tokenizer files built once per session (the real Llama-3 one and a tiny one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenizers_util import LLAMA3_MODEL, make_llama3_tokenizer, make_tiny_tokenizer


@pytest.fixture(scope="session")
def llama3_tokenizer_dir(tmp_path_factory) -> Path:
    """A directory holding the real Llama-3 tokenizer.json + tokenizer_config.json (about 2 s to build)."""
    if not LLAMA3_MODEL.is_file():
        pytest.skip(f"{LLAMA3_MODEL} is absent (../shared not checked out)")
    pytest.importorskip("tiktoken")
    pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("llama3_tokenizer")
    make_llama3_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A directory holding the tiny byte-level BPE (tokenizers_util.TINY_VOCAB ids) as a checkpoint would."""
    out = tmp_path_factory.mktemp("tiny_tokenizer")
    make_tiny_tokenizer(out)
    return out
