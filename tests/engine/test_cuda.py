"""The CUDA paths against the reference paths, on the GPU machine (skipped elsewhere): the Triton paged decode
kernel against gather-and-SDPA at the real Llama-3-8B head shapes and the tiny model's, and the engine with CUDA
graphs against the eager engine and the CPU engine on the tiny LLaVA-NeXT."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

from .test_engine import drive, image_request, model, text_request  # noqa: E402,F401  (the tiny-model fixture)

from videocap.engine.engine import Engine  # noqa: E402
from videocap.models.layers import paged_attention  # noqa: E402
from videocap.models.layers.attention import AttnMetadata, cached_attention  # noqa: E402

if not paged_attention.available():
    pytest.skip("needs Triton", allow_module_level=True)


def random_cache(B, H, KV, D, lens, dtype, block_size=16, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    width = max(-(-n // block_size) for n in lens)
    blocks = B * width + 3
    cache = torch.randn(2, blocks, block_size, KV, D, device="cuda", dtype=dtype, generator=g)
    tables = torch.randperm(blocks, device="cuda", generator=g)[: B * width].view(B, width)
    q = torch.randn(B, H, D, device="cuda", dtype=dtype, generator=g)
    return q, cache, tables


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("H, KV, D", [(32, 8, 128), (4, 2, 16)])
@pytest.mark.parametrize("lens", [[1], [2300], [1, 17, 64, 65, 600, 1999, 5], list(range(1, 200, 3))])
def test_paged_kernel_equals_gather_and_sdpa(dtype, tol, H, KV, D, lens):
    B = len(lens)
    q, cache, tables = random_cache(B, H, KV, D, lens, dtype)
    context = torch.tensor(lens, device="cuda")
    meta = AttnMetadata((1,) * B, context, torch.zeros(B, dtype=torch.long, device="cuda"), tables, 16, max(lens))
    expected = cached_attention(q, cache, meta, D**-0.5)
    for splits in sorted({1, 4, paged_attention.num_splits(B, KV, q.device)}):
        out = paged_attention.paged_decode(q, cache, tables.int(), context.int(), D**-0.5, splits)
        torch.testing.assert_close(out, expected, atol=tol, rtol=tol)


def requests(model):
    return [text_request(5 + 7 * i, 100 + i, 9 + i % 4) for i in range(6)] + [
        image_request(model, (500, 300), 3, max_new_tokens=7), image_request(model, (300, 700), 4, max_new_tokens=5)]


def answers(engine: Engine, model) -> list[list[int]]:
    """Each request's tokens, in the order the requests were made (they finish in other orders)."""
    first = requests(model)
    late = {3: [text_request(11, 500, 6)], 5: [text_request(40, 501, 8)]}
    final = drive(engine, first, late)
    return [final[r.request_id].token_ids for r in first + late[3] + late[5]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graphs_eager_and_cpu_engines_agree(model, dtype):
    cuda_model = model.to("cuda", dtype)
    try:
        engine = Engine(cuda_model, max_cache_tokens=4096)
        assert engine.runner.graphs is not None and engine.runner.paged_kernel and engine.look_ahead
        graphed = answers(engine, model)
        assert graphed == answers(Engine(cuda_model, max_cache_tokens=4096, eager=True), model)
        if dtype == torch.float32:  # the CPU engine is the tested reference
            assert graphed == answers(Engine(model.to("cpu"), max_cache_tokens=4096), model)
    finally:
        model.to("cpu", torch.float32)


def test_graph_logits_equal_eager_logits(model):
    cuda_model = model.to("cuda")
    try:
        logits = {}
        for eager in (False, True):
            engine = Engine(cuda_model, max_cache_tokens=4096, eager=eager)
            for r in [text_request(9 + i, 300 + i, 4) for i in range(5)]:
                engine.add(r)
            engine.step()  # prefill
            batch = engine.scheduler.schedule()
            logits[eager] = engine.runner.run(batch).clone()
        torch.testing.assert_close(logits[False], logits[True], atol=1e-5, rtol=1e-5)
    finally:
        model.to("cpu")


def as_accurate(ours: torch.Tensor, theirs: torch.Tensor, exact: torch.Tensor, slack: float = 1.5) -> None:
    """`ours` is at most `slack` times as far from the float64 result as the PyTorch path `theirs` is (plus one
    float32 rounding): the fused kernel is as accurate as the layers it replaces, whatever its rounding order."""
    exact = exact.double()
    ours_err = (ours.double() - exact).abs().max().item()
    theirs_err = (theirs.double() - exact).abs().max().item()
    assert ours_err <= slack * theirs_err + 1e-6 * exact.abs().max().item(), (ours_err, theirs_err)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_add_rms_norm_matches_the_pytorch_layers(dtype):
    from videocap.models.layers import fused
    from videocap.models.layers.norm import RMSNorm

    g = torch.Generator(device="cuda").manual_seed(0)
    x, delta = (torch.randn(5, 4096, device="cuda", dtype=dtype, generator=g) for _ in range(2))
    norm = RMSNorm(4096, 1e-5).to("cuda", dtype)
    norm.weight.data = 1 + 0.1 * torch.randn(4096, device="cuda", dtype=dtype, generator=g)
    total, out = fused.add_rms_norm(x, delta, norm.weight, 1e-5)
    assert torch.equal(total, x + delta)  # one rounding of the same sum
    s = total.double()
    as_accurate(out, norm(total), norm.weight.double() * s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + 1e-5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_silu_mul_matches_the_pytorch_layers(dtype):
    import torch.nn.functional as F

    from videocap.models.layers import fused

    gate_up = torch.randn(5, 2 * 14336, device="cuda", dtype=dtype, generator=torch.Generator(device="cuda").manual_seed(1))
    gate, up = gate_up.chunk(2, dim=-1)
    as_accurate(fused.silu_mul(gate_up), F.silu(gate) * up, F.silu(gate.double()) * up.double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_rope_and_cache_matches_the_pytorch_layers(dtype):
    from videocap.models.layers import fused
    from videocap.models.layers.attention import write_kv
    from videocap.models.layers.rope import Rotary

    g = torch.Generator(device="cuda").manual_seed(2)
    T, H, KV, D = 5, 32, 8, 128
    qkv = torch.randn(T, (H + 2 * KV) * D, device="cuda", dtype=dtype, generator=g)
    cos, sin = Rotary(D, 500000.0).cos_sin(torch.tensor([0, 7, 100, 2047, 8000], device="cuda"), dtype)
    cache, expected = (torch.zeros(2, 12, 16, KV, D, device="cuda", dtype=dtype) for _ in range(2))
    slots = torch.tensor([0, 17, 33, 100, 191], device="cuda")
    q, k = fused.rope_and_cache(qkv, cos, sin, cache, slots, H, KV, keys=True)
    assert fused.rope_and_cache(qkv, cos, sin, cache, slots, H, KV)[1] is None
    qk = Rotary.apply(qkv[:, : (H + KV) * D].view(T, H + KV, D), cos, sin)
    exact = Rotary.apply(qkv[:, : (H + KV) * D].view(T, H + KV, D).double(), cos.double(), sin.double())
    as_accurate(q, qk[:, :H], exact[:, :H])
    as_accurate(k, qk[:, H:], exact[:, H:])
    v = qkv[:, (H + KV) * D :].view(T, KV, D)
    write_kv(expected, k, v, slots)
    assert torch.equal(cache, expected)  # the kernel's own keys and the values, in the right slots


def test_sampling_is_queued_without_a_host_synchronisation():
    """Look-ahead decoding needs it: a sampled step (temperature, top-k, top-p, repetition penalty, a subset of rows)
    is only queued on the stream. `torch.tensor(list, device="cuda")` would wait there for the step in flight."""
    from videocap.engine.request import SamplingParams
    from videocap.engine.sampler import sample

    logits = torch.randn(3, 1000, device="cuda")
    params = [SamplingParams(temperature=0.7, top_k=50, top_p=0.9, repetition_penalty=1.2), SamplingParams(),
              SamplingParams(temperature=1.3)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = sample(logits, params, [1, 2, 3], [0, 4, 9], [[5, 6], [], []])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out[1].item() == logits[1].argmax().item()
