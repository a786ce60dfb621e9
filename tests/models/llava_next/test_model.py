"""videocap's LLaVA-NeXT against transformers' LlavaNextForConditionalGeneration on the same random weights:
all checkpoint layouts load, logits over a whole prompt with a grid image match in float32, greedy tokens agree."""

from __future__ import annotations

import math

import pytest
import torch

from llava_tiny import IMAGE_TOKEN, LAYOUTS, make_hf_model, save_layout

from videocap.errors import CheckpointError
from videocap.models.layers.attention import AttnMetadata
from videocap.models.llava_next import anyres
from videocap.models.llava_next.weights import LLAVA_HF_V5, load
from videocap.weights.loader import loadable_tensors

pytest.importorskip("transformers")

# (width, height) of grid images: 16 frames of 1080p, portrait 1080p, 4:3, and a 2x2 grid of square frames.
SIZES = [(1920, 1096), (1096, 1920), (1920, 1456), (1010, 1010), (1920, 560)]


@pytest.fixture(scope="module")
def hf_model():
    return make_hf_model(seed=0)


@pytest.fixture(scope="module")
def checkpoints(hf_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("llava")
    return {layout: save_layout(hf_model, root / layout, layout) for layout in LAYOUTS}


def fresh_cache(model, n_tokens: int, block_size: int = 16):
    cfg = model.cfg.text
    blocks = math.ceil(n_tokens / block_size) + 1
    caches = [torch.zeros(2, blocks, block_size, cfg.num_kv_heads, cfg.head_dim) for _ in range(cfg.num_layers)]
    table = torch.arange(blocks)[None]
    return caches, table, block_size


def step_meta(table, block_size, start: int, n: int) -> AttnMetadata:
    return AttnMetadata(
        query_lens=(n,), context_lens=torch.tensor([start + n]), slot_mapping=torch.arange(start, start + n),
        block_tables=table, block_size=block_size,
    )


def prompt_ids(n_image: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
    before = torch.randint(0, IMAGE_TOKEN - 16, (7,), generator=generator)
    after = torch.randint(0, IMAGE_TOKEN - 16, (11,), generator=generator)
    return torch.cat([before, torch.full((n_image,), IMAGE_TOKEN), after]), len(before)


def ours_logits(model, ids, pixels, size):
    embeds = model.encode_images(pixels, [size])[0]
    mask = ids == IMAGE_TOKEN
    caches, table, bs = fresh_cache(model, len(ids))
    hidden = model(ids, torch.arange(len(ids)), step_meta(table, bs, 0, len(ids)), caches, embeds, mask)
    return model.compute_logits(hidden), (caches, table, bs)


def hf_logits(hf, ids, pixels, size):
    w, h = size
    out = hf(input_ids=ids[None], pixel_values=pixels[None], image_sizes=torch.tensor([[h, w]]))
    return out.logits[0]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_to_the_same_weights(checkpoints, hf_model, layout):
    model = load(checkpoints[layout], dtype=torch.float32)
    ours, _ = loadable_tensors(model)  # fused projections by their parts' names (q_proj, gate_proj, ...)
    theirs = {LLAVA_HF_V5.rename(k): v for k, v in hf_model.state_dict().items()}
    assert set(ours) == set(theirs)
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name


@pytest.mark.parametrize("size", SIZES)
def test_logits_match_transformers_over_the_whole_prompt(checkpoints, hf_model, size):
    model = load(checkpoints["hf5-save"], dtype=torch.float32)
    g = torch.Generator().manual_seed(sum(size))
    n_tiles = model.tiles_per_image(size)
    pixels = torch.randn(n_tiles, 3, 336, 336, generator=g)
    n_image = anyres.image_token_count(size, model.cfg.grid_pinpoints)
    ids, _ = prompt_ids(n_image, g)
    with torch.no_grad():
        ours, _ = ours_logits(model, ids, pixels, size)
        theirs = hf_logits(hf_model, ids, pixels, size)
    assert ours.shape == theirs.shape  # equal image-token counts, or transformers would have refused the prompt
    assert (ours - theirs).abs().max().item() <= 1e-4
    assert theirs.std() > 0.5  # the comparison is not between near-constant logits


def test_llava_original_layout_gives_the_same_logits(checkpoints, hf_model):
    size = SIZES[0]
    model = load(checkpoints["llava"], dtype=torch.float32)
    assert model.cfg.vision_tower.endswith("clip-vision")  # read from the local CLIP path, as the seed does
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(model.tiles_per_image(size), 3, 336, 336, generator=g)
    ids, _ = prompt_ids(anyres.image_token_count(size, model.cfg.grid_pinpoints), g)
    with torch.no_grad():
        ours, _ = ours_logits(model, ids, pixels, size)
        theirs = hf_logits(hf_model, ids, pixels, size)
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_greedy_tokens_match_transformers_generate(tmp_path):
    hf = make_hf_model(seed=3, head_scale=8.0)  # large top-1 margins: float noise cannot flip a choice
    model = load(save_layout(hf, tmp_path / "m", "hf5"), dtype=torch.float32)
    size = (1920, 1096)
    g = torch.Generator().manual_seed(5)
    pixels = torch.randn(model.tiles_per_image(size), 3, 336, 336, generator=g)
    ids, _ = prompt_ids(anyres.image_token_count(size, model.cfg.grid_pinpoints), g)
    n_new = 12
    with torch.no_grad():
        ref = hf.generate(
            input_ids=ids[None], pixel_values=pixels[None], image_sizes=torch.tensor([[size[1], size[0]]]),
            max_new_tokens=n_new, do_sample=False, eos_token_id=None, pad_token_id=0,
        )[0, len(ids):].tolist()
        logits, (caches, table, bs) = ours_logits(model, ids, pixels, size)
        tokens = [int(logits[-1].argmax())]
        while len(tokens) < n_new:  # decode one token at a time through the cache
            pos = len(ids) + len(tokens) - 1
            hidden = model(torch.tensor(tokens[-1:]), torch.tensor([pos]), step_meta(table, bs, pos, 1), caches)
            tokens.append(int(model.compute_logits(hidden)[-1].argmax()))
    assert tokens == ref


def test_missing_and_unexpected_tensors_are_named(checkpoints, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(checkpoints["hf5-save"], bad)
    state = load_file(bad / "model.safetensors")
    del state["language_model.model.layers.1.mlp.up_proj.weight"]
    state["language_model.model.layers.0.extra.weight"] = torch.zeros(2)
    save_file(state, bad / "model.safetensors")
    with pytest.raises(CheckpointError) as e:
        load(bad, dtype=torch.float32)
    assert "missing 1: llm.layers.1.mlp.up_proj.weight" in str(e.value)
    assert "unexpected 1: language_model.model.layers.0.extra.weight" in str(e.value)


def test_a_checkpoint_without_the_vision_tower_takes_it_from_mm_vision_tower(checkpoints, hf_model, tmp_path):
    """LLaVA-original checkpoints may leave CLIP out; the reference then loads `mm_vision_tower` (here a local
    CLIP folder holding both halves of a CLIP checkpoint)."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    src = checkpoints["llava"]
    lean, clip = tmp_path / "lean", tmp_path / "clip"
    shutil.copytree(src, lean)
    clip.mkdir()
    shutil.copy(src / "clip-vision" / "config.json", clip / "config.json")
    tower = {}
    for shard in lean.glob("*.safetensors"):
        state = load_file(shard)
        tower.update({k.replace("model.vision_tower.vision_tower.", ""): v for k, v in state.items() if "vision_tower" in k})
        save_file({k: v for k, v in state.items() if "vision_tower" not in k}, shard)
    tower["text_model.embeddings.token_embedding.weight"] = torch.zeros(3, 2)  # the text half is skipped
    save_file(tower, clip / "model.safetensors")
    config = json.loads((lean / "config.json").read_text())
    config["mm_vision_tower"] = str(clip)
    (lean / "config.json").write_text(json.dumps(config))

    model = load(lean, dtype=torch.float32)
    ours, _ = loadable_tensors(model)
    theirs = {LLAVA_HF_V5.rename(k): v for k, v in hf_model.state_dict().items()}
    assert all(torch.equal(ours[name], t) for name, t in theirs.items())

    del tower["vision_model.post_layernorm.bias"]
    save_file(tower, clip / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing 1: vision\.post_layernorm\.bias"):
        load(lean, dtype=torch.float32)
