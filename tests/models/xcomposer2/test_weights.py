"""Loading ShareCaptioner-Video checkpoints in the trust_remote_code layout: every tensor lands (wqkv re-laid and
back), sharded safetensors with an index, bf16, the optional post-layernorm, missing/unexpected/misshapen tensors
named, configs that are another model refused, and `videocap.load("sharecaptioner-video")` through the fake Hub."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch
from fakehub import FakeHub, point_hf_at
from safetensors.torch import load_file, save_file

from helpers import needs_shared
from xcomposer2_tiny import INTERNLM2_MODEL, TINY, prefill_logits as run, random_state, reference_logits, save_checkpoint

from videocap import api
from videocap.errors import CheckpointError
from videocap.models.xcomposer2.config import PRESETS, load_config, parse_config, to_json
from videocap.models.xcomposer2.weights import checkpoint_state, load


@pytest.fixture(scope="module")
def state():
    return random_state(TINY, seed=2)


@pytest.fixture(scope="module")
def ckpt(state, tmp_path_factory):
    return save_checkpoint(state, TINY, tmp_path_factory.mktemp("xc") / "tiny")


def test_every_tensor_loads_and_comes_back_in_the_checkpoint_layout(ckpt, state):
    assert len(list(ckpt.glob("model-*.safetensors"))) == 3
    model = load(ckpt, dtype=torch.float32)
    back = checkpoint_state(model)
    assert set(back) == set(state)
    for key, value in state.items():
        assert torch.equal(back[key], value), key
    # the decoder's own fused tensor really is [q | k | v]: the first query head of kv group 1 is checkpoint row
    # block (groups + 2) * 1, videocap's head 2 (groups = 2)
    d = TINY.head_dim
    wqkv = state["model.layers.0.attention.wqkv.weight"]
    assert torch.equal(model.llm.layers[0].attention.qkv.weight[2 * d : 3 * d], wqkv[4 * d : 5 * d])


def test_a_saved_and_reloaded_model_gives_the_same_logits(ckpt, state, tmp_path):
    model = load(ckpt, dtype=torch.float32)
    again = load(save_checkpoint(checkpoint_state(model), TINY, tmp_path / "again", shards=1), dtype=torch.float32)
    ids = torch.randint(3, 92000, (19,), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(19, dtype=torch.bool)
    mask[2:9] = True
    embeds = torch.randn(7, TINY.hidden_size, generator=torch.Generator().manual_seed(1))
    first, second = run(model, ids, embeds, mask), run(again, ids, embeds, mask)
    assert torch.equal(first, second)
    with torch.no_grad():
        ref = reference_logits(state, TINY, model.embed(ids, embeds, mask), mask)
    assert (first.double() - ref).abs().max() < 1e-4


def test_loads_in_bfloat16(ckpt, state):
    model = load(ckpt, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    back = checkpoint_state(model)
    assert torch.equal(back["model.layers.1.attention.wqkv.Plora_B.weight"],
                       state["model.layers.1.attention.wqkv.Plora_B.weight"].bfloat16())


def test_the_vision_post_layernorm_may_be_absent(ckpt, tmp_path):
    lean = tmp_path / "lean"
    shutil.copytree(ckpt, lean)
    for shard in lean.glob("*.safetensors"):
        save_file({k: v for k, v in load_file(shard).items() if "post_layernorm" not in k}, shard)
    load(lean, dtype=torch.float32)  # the features never pass through it (the reference drops it when training)


def test_missing_unexpected_and_misshapen_tensors_are_all_named(ckpt, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    edits = {
        "drop": ["model.layers.1.feed_forward.w3.Plora_A.weight", "model.layers.0.attention.wqkv.weight", "plora_sub_GN"],
        "add": "model.layers.0.attention.extra.weight",
        "reshape": "model.layers.1.attention.wo.Plora_B.weight",
    }
    for shard in bad.glob("*.safetensors"):
        tensors = load_file(shard)
        for key in edits["drop"]:
            tensors.pop(key, None)
        if edits["reshape"] in tensors:
            tensors[edits["reshape"]] = torch.zeros(3, 3)
            tensors[edits["add"]] = torch.zeros(2)
        save_file(tensors, shard)
    with pytest.raises(CheckpointError) as e:
        load(bad, dtype=torch.float32)
    message = str(e.value)
    assert "missing 4: " in message and "InternLM-XComposer2" in message  # the misshapen one is left unfilled too
    for name in ("llm.layers.1.feed_forward.w3.Plora_A.weight", "llm.layers.0.attention.wqkv.weight", "vision.sub_GN",
                 "llm.layers.1.attention.wo.Plora_B.weight"):
        assert name in message
    assert "unexpected 1: model.layers.0.attention.extra.weight" in message
    assert "wrong shape 1: model.layers.1.attention.wo.Plora_B.weight [3, 3]" in message


def test_the_config_is_parsed_and_checked(ckpt):
    cfg = load_config(ckpt)
    assert cfg == TINY and cfg.lora_rank == 8 and cfg.lora_alpha == 16.0
    real = {**to_json(PRESETS["7b"]), "rope_scaling": None, "max_length": 16384, "attn_implementation": "flash_attention_2"}
    seven = parse_config(real)
    assert seven == PRESETS["7b"] and (seven.lora_rank, seven.lora_alpha) == (256, 256.0)  # the reference's PLoRA
    assert seven.vision.image_size == 336 and seven.vision.hidden_size == 1024 and seven.head_dim == 128
    assert parse_config({**real, "rope_scaling": {"type": "dynamic", "factor": 2.0}}).rope_scaling.rope_type == "default"
    linear = parse_config({**real, "rope_scaling": {"type": "linear", "factor": 2.0}}).rope_scaling
    assert (linear.rope_type, linear.factor) == ("linear", 2.0)
    for bad, match in [({"model_type": "internlm2"}, "model_type"), ({"img_size": 490}, "490"),
                       ({"rope_scaling": {"type": "yarn", "factor": 2.0}}, "yarn"),
                       ({"num_key_value_heads": 5}, "num_key_value_heads"), ({"hidden_act": "gelu"}, "silu")]:
        with pytest.raises(ValueError, match=match):
            parse_config({**real, **bad})


def test_a_broken_config_is_a_checkpoint_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "internlmxcomposer2", "hidden_size": 64}))
    with pytest.raises(CheckpointError, match="not an InternLM-XComposer2-4KHD config"):
        load_config(tmp_path)


def test_linear_rope_scaling_matches_the_reference(tmp_path):
    cfg = replace(TINY, rope_scaling=replace(TINY.rope_scaling, rope_type="linear", factor=2.0))
    state = random_state(cfg, seed=5)
    model = load(save_checkpoint(state, cfg, tmp_path / "linear", tokenizer=False), dtype=torch.float32)
    ids = torch.randint(3, 92000, (23,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = reference_logits(state, cfg, model.embed(ids), None)
    assert (run(model, ids).double() - ref).abs().max() < 1e-4


def test_load_by_alias_through_the_hub(ckpt, monkeypatch, h264):
    needs_shared(INTERNLM2_MODEL)
    files = {p.name: p.read_bytes() for p in ckpt.iterdir() if p.is_file()}
    with FakeHub({"Lin-Chen/ShareCaptioner-Video": {"main": files}}) as hub:
        point_hf_at(hub, monkeypatch)
        captioner = api.load("sharecaptioner-video", device="cpu", progress=False)
        downloaded = {path.rsplit("/", 1)[-1] for path in hub.downloads()}
    assert {"tokenizer.model", "config.json", "model.safetensors.index.json"} <= downloaded
    assert captioner.family == "xcomposer2" and captioner.model.cfg == TINY
    answer = captioner.ask(str(h264), "What happens?", frames=4, max_new_tokens=3, num_beams=1)
    assert 1 <= answer.new_tokens <= 3 and answer.image_tokens > 0
