"""Fixtures for the captioning modes: a tiny LLaVA-NeXT checkpoint and captioner, the real Llama-3 tokenizer, and
sessions whose engine is a scripted stand-in (fakes.FakeEngine) for checking exactly what each mode sends."""

from __future__ import annotations

from pathlib import Path

import pytest

from llava_tiny import make_hf_model, save_layout
from tokenizers_util import LLAMA3_MODEL, make_llama3_tokenizer

from videocap import api
from videocap.models.llava_next.config import load_config
from videocap.models.llava_next.prompt import load_tokenizer

pytest.importorskip("transformers")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return save_layout(make_hf_model(seed=7, head_scale=8.0), tmp_path_factory.mktemp("ckpt") / "tiny", "hf5-save")


@pytest.fixture(scope="session")
def tiny_captioner(tiny_ckpt):
    return api.load(str(tiny_ckpt), device="cpu", progress=False)


@pytest.fixture(scope="session")
def tiny_base_captioner(tiny_ckpt):
    """The tiny model fed the 336 px base view only (576 image tokens): cheaper for long videos."""
    return api.load(str(tiny_ckpt), device="cpu", image_view="base", progress=False)


@pytest.fixture(scope="session")
def llama3_dir(tmp_path_factory) -> Path:
    if not LLAMA3_MODEL.is_file():
        pytest.skip(f"{LLAMA3_MODEL} is absent (../shared not checked out)")
    pytest.importorskip("tiktoken")
    out = tmp_path_factory.mktemp("llama3_tokenizer")
    make_llama3_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def llama3(llama3_dir):
    return load_tokenizer(llama3_dir)


@pytest.fixture(scope="session")
def tiny_cfg(tiny_ckpt):
    return load_config(tiny_ckpt)
