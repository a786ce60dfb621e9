"""videocap's InternLM2 + Partial LoRA decoder against an independent float64 reference (xcomposer2_tiny.py) on
the same random weights in the checkpoint's layout: the LoRA branch itself, LoRA only at image positions, whole
prompts, cached incremental decoding through the engine, and batched vs single sequences."""

from __future__ import annotations

import math

import pytest
import torch

from xcomposer2_tiny import TINY, prefill_logits as run, random_state, reference_logits, save_checkpoint

from videocap.engine.engine import Engine
from videocap.engine.request import Request, SamplingParams
from videocap.models.layers.attention import AttnMetadata
from videocap.models.layers.lora import LoRALinear, PartialLoRA
from videocap.models.xcomposer2.decoder import qkv_layout_perm
from videocap.models.xcomposer2.weights import load


@pytest.fixture(scope="module")
def state():
    return random_state(TINY, seed=1, head_scale=6.0)


@pytest.fixture(scope="module")
def model(state, tmp_path_factory):
    return load(save_checkpoint(state, TINY, tmp_path_factory.mktemp("xc") / "tiny", tokenizer=False),
                dtype=torch.float32)


def image_prompt(model, seed: int, n_before: int = 3, n_image: int = 40, n_after: int = 9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 92000, (n_before + n_image + n_after,), generator=g)
    mask = torch.zeros(len(ids), dtype=torch.bool)
    mask[n_before : n_before + n_image] = True
    embeds = 0.5 * torch.randn(n_image, TINY.hidden_size, generator=g)
    return ids, embeds, mask


def reference_from_ids(model, state, ids, embeds=None, mask=None):
    with torch.no_grad():
        x = model.embed(ids, embeds, mask)
    return reference_logits(state, TINY, x, mask)


def test_lora_branch_matches_a_float64_computation():
    torch.manual_seed(0)
    layer = LoRALinear(24, 40, rank=4, alpha=12.0, bias=True)
    branch = PartialLoRA(24, 40, rank=4, alpha=12.0)
    for p in [*layer.parameters(), *branch.parameters()]:
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(10, 24)
    rows = torch.tensor([2, 3, 7])
    with torch.no_grad():
        got = layer(x, rows)
        base = torch.randn(10, 40)
        added = branch.add_(base.clone(), x, rows)
    xd = x.double()
    want = xd @ layer.weight.double().T + layer.bias.double()
    want[rows] += (xd[rows] @ layer.Plora_A.weight.double().T) @ layer.Plora_B.weight.double().T * 3.0
    assert (got.double() - want).abs().max() < 1e-5
    want2 = base.double().clone()
    want2[rows] += (xd[rows] @ branch.Plora_A.weight.double().T) @ branch.Plora_B.weight.double().T * 3.0
    assert (added.double() - want2).abs().max() < 1e-5
    assert torch.equal(layer(x)[0], (x @ layer.weight.T + layer.bias)[0])  # no rows: the plain linear


def test_wqkv_row_permutation_is_the_grouped_layout():
    # 4 query heads, 2 kv heads, head_dim 1: checkpoint rows are [q0 q1 k0 v0 | q2 q3 k1 v1]
    assert qkv_layout_perm(4, 2, 1).tolist() == [0, 1, 4, 6, 2, 3, 5, 7]
    perm = qkv_layout_perm(32, 8, 128)
    assert sorted(perm.tolist()) == list(range((32 + 16) * 128))


def test_text_logits_match_the_reference(model, state):
    ids = torch.randint(3, 92000, (37,), generator=torch.Generator().manual_seed(2))
    ours, ref = run(model, ids), reference_from_ids(model, state, ids)
    assert (ours.double() - ref).abs().max() < 1e-4
    assert ref.std() > 1.0  # not near-constant logits


def test_image_logits_match_the_reference_with_lora_at_image_positions(model, state):
    ids, embeds, mask = image_prompt(model, seed=3)
    ours, ref = run(model, ids, embeds, mask), reference_from_ids(model, state, ids, embeds, mask)
    assert (ours.double() - ref).abs().max() < 1e-4


def test_lora_applies_only_at_image_positions(model, state):
    ids, embeds, mask = image_prompt(model, seed=4)
    no_lora = dict(state)
    for k in state:
        if "Plora_B" in k:
            no_lora[k] = torch.zeros_like(state[k])
    with torch.no_grad():
        x = model.embed(ids, embeds, mask)
    plain = reference_logits(no_lora, TINY, x, mask)
    ours = run(model, ids, embeds, mask).double()
    first = int(mask.nonzero()[0])
    # before the image nothing differs; from the first image position on, the branches change the result
    assert (ours[:first] - plain[:first]).abs().max() < 1e-4
    assert (ours[first:] - plain[first:]).abs().max() > 1e-2
    # the same embeddings with no image rows: videocap's decoder is the plain one everywhere
    with torch.no_grad():
        plain_ours = model.compute_logits(model.llm(x, torch.arange(len(ids)), *_fresh(model, len(ids)), None))
    assert (plain_ours.double() - plain).abs().max() < 1e-4


def _fresh(model, n: int):
    layers, kv, d = model.kv_spec()
    blocks = math.ceil(n / 16)
    caches = [torch.zeros(2, blocks, 16, kv, d) for _ in range(layers)]
    return AttnMetadata((n,), torch.tensor([n]), torch.arange(n), torch.arange(blocks)[None], 16), caches


def test_engine_greedy_decoding_matches_the_uncached_reference(model, state):
    """The engine (prefill with LoRA, then plain decode steps through the paged cache) picks, at every step, the
    argmax of the reference run over the whole sequence — whose decode tokens carry no LoRA, as in the reference
    (decode steps feed ids, and the reference resets im_mask to zeros for them)."""
    ids, embeds, mask = image_prompt(model, seed=5)
    engine = Engine(model, max_cache_tokens=512)
    request = Request(ids.tolist(), SamplingParams(max_new_tokens=10), image_mask=mask.tolist(), image_embeds=embeds)
    [out] = [o for o in engine.generate([request]) if o.finished]
    assert len(out.token_ids) == 10
    full = torch.cat([ids, torch.tensor(out.token_ids)])
    full_mask = torch.cat([mask, torch.zeros(10, dtype=torch.bool)])
    with torch.no_grad():
        x = model.embed(full, embeds, full_mask)
    ref = reference_logits(state, TINY, x, full_mask)
    steps = ref[len(ids) - 1 : -1].argmax(-1).tolist()
    assert steps == out.token_ids
    margins = ref[len(ids) - 1 : -1].topk(2, -1).values
    assert (margins[:, 0] - margins[:, 1]).min() > 1e-3  # the choices are not ties


def test_batched_prefill_equals_single_sequences(model):
    a = image_prompt(model, seed=6, n_image=30)
    b = image_prompt(model, seed=7, n_before=5, n_image=50, n_after=4)
    c_ids = torch.randint(3, 92000, (21,), generator=torch.Generator().manual_seed(8))
    singles = [run(model, *a)[-1], run(model, *b)[-1], run(model, c_ids)[-1]]
    ids = torch.cat([a[0], b[0], c_ids])
    mask = torch.cat([a[2], b[2], torch.zeros(len(c_ids), dtype=torch.bool)])
    embeds = torch.cat([a[1], b[1]])
    lens = (len(a[0]), len(b[0]), len(c_ids))
    layers, kv, d = model.kv_spec()
    blocks = [math.ceil(n / 16) for n in lens]
    caches = [torch.zeros(2, sum(blocks), 16, kv, d) for _ in range(layers)]
    tables = torch.zeros(3, max(blocks), dtype=torch.long)
    slots, start = [], 0
    for i, (n, nb) in enumerate(zip(lens, blocks)):
        tables[i, :nb] = torch.arange(start, start + nb)
        slots.append(torch.arange(start * 16, start * 16 + n))
        start += nb
    meta = AttnMetadata(lens, torch.tensor(lens), torch.cat(slots), tables, 16, context_lens_host=lens)
    positions = torch.cat([torch.arange(n) for n in lens])
    with torch.no_grad():
        hidden = model(ids, positions, meta, caches, embeds, mask)
    last = torch.tensor(lens).cumsum(0) - 1
    batched = model.compute_logits(hidden[last])
    for got, want in zip(batched, singles):
        assert (got - want).abs().max() < 1e-4
