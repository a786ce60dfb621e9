"""Fused Triton kernels for the small element-wise work of a CUDA decode step.

At one new token per sequence, a Llama layer's matrix products read the weights once and are as fast as memory
allows; what is left is some fifteen tiny element-wise kernels per layer (norms, residual adds, rotary, the
cache write, SiLU), each costing a few microseconds of launch and latency — a millisecond per step at 32 layers,
15% of a single request's decode time. These kernels do the same arithmetic in four launches per layer:
- `add_rms_norm`: residual += delta, then the RMSNorm of the sum (normalised in float32, rounded to the
  model dtype, then scaled, as the checkpoints were trained);
- `rope_and_cache`: rotary embedding of q and k (half-split layout), k and v written to their cache slots, q
  returned;
- `silu_mul`: silu(gate) * up from the fused gate/up projection.
Rounding points match the PyTorch path of norm.py / rope.py / mlp.py; only the order of float32 sums may differ.
Used where the runner asks for them (AttnMetadata.fused: on CUDA with Triton), in prefill as in decode, where
they also save a quarter of a prefill's time; on CPU the PyTorch path runs.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None


def add_rms_norm(
    x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, C) x (+ delta) → (the sum, weight * rms_norm(sum)); without delta the sum is x itself."""
    T, C = x.shape
    out = torch.empty_like(x)
    total = x if delta is None else torch.empty_like(x)
    _add_rms_norm_kernel[(T,)](
        x, x if delta is None else delta, weight, total, out, eps, C, HAS_DELTA=delta is not None,
        BLOCK=triton.next_power_of_2(C), num_warps=8 if C >= 4096 else 4,
    )
    return total, out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """(T, 2F) [gate | up] → (T, F) silu(gate) * up."""
    T, F2 = gate_up.shape
    F = F2 // 2
    out = torch.empty(T, F, device=gate_up.device, dtype=gate_up.dtype)
    block = 1024
    _silu_mul_kernel[(T, triton.cdiv(F, block))](gate_up, out, F, gate_up.stride(0), BLOCK=block, num_warps=4)
    return out


def rope_and_cache(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: torch.Tensor, slots: torch.Tensor, heads: int,
    kv_heads: int, keys: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """qkv (T, (H + 2 KV) * D) → (rotated q (T, H, D), rotated k (T, KV, D) if `keys` else None); rotated k and v
    are stored at `slots` of the (2, blocks, block_size, KV, D) cache."""
    T = qkv.shape[0]
    D = cos.shape[-1]
    q = torch.empty(T, heads, D, device=qkv.device, dtype=qkv.dtype)
    k = torch.empty(T, kv_heads, D, device=qkv.device, dtype=qkv.dtype) if keys else q
    _rope_cache_kernel[(T, heads + 2 * kv_heads)](
        qkv, cos, sin, cache, slots, q, k, qkv.stride(0), cos.stride(0), cache.stride(0), cache.stride(-2),
        HEADS=heads, KV_HEADS=kv_heads, HEAD_DIM=D, KEYS=keys, num_warps=1,
    )
    return q, (k if keys else None)


if triton is not None:

    @triton.jit
    def _add_rms_norm_kernel(x_ptr, delta_ptr, w_ptr, total_ptr, out_ptr, eps, C, HAS_DELTA: tl.constexpr,
                             BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64) * C
        c = tl.arange(0, BLOCK)
        mask = c < C
        x = tl.load(x_ptr + row + c, mask=mask, other=0.0)
        if HAS_DELTA:
            x = (x.to(tl.float32) + tl.load(delta_ptr + row + c, mask=mask, other=0.0).to(tl.float32)).to(x.dtype)
            tl.store(total_ptr + row + c, x, mask=mask)
        xf = x.to(tl.float32)
        normed = (xf * tl.rsqrt(tl.sum(xf * xf, 0) / C + eps)).to(x.dtype)
        w = tl.load(w_ptr + c, mask=mask, other=0.0)
        tl.store(out_ptr + row + c, (normed.to(tl.float32) * w.to(tl.float32)).to(x.dtype), mask=mask)

    @triton.jit
    def _silu_mul_kernel(gate_up_ptr, out_ptr, F, stride_row, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        f = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = f < F
        gate = tl.load(gate_up_ptr + row * stride_row + f, mask=mask, other=0.0)
        up = tl.load(gate_up_ptr + row * stride_row + F + f, mask=mask, other=0.0)
        g = gate.to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(gate.dtype)  # F.silu rounds to the dtype before the product
        tl.store(out_ptr + row * F + f, (act.to(tl.float32) * up.to(tl.float32)).to(gate.dtype), mask=mask)

    @triton.jit
    def _rope_cache_kernel(qkv_ptr, cos_ptr, sin_ptr, cache_ptr, slots_ptr, q_ptr, k_ptr, stride_t, stride_cs,
                           stride_kv, stride_slot_head, HEADS: tl.constexpr, KV_HEADS: tl.constexpr,
                           HEAD_DIM: tl.constexpr, KEYS: tl.constexpr):
        t = tl.program_id(0).to(tl.int64)
        head = tl.program_id(1)
        half = tl.arange(0, HEAD_DIM // 2)
        src = qkv_ptr + t * stride_t + head * HEAD_DIM
        x1 = tl.load(src + half)
        x2 = tl.load(src + HEAD_DIM // 2 + half)
        if head < HEADS + KV_HEADS:  # q or k: rotate (cos/sin repeat over the two halves)
            cos = tl.load(cos_ptr + t * stride_cs + half).to(tl.float32)
            sin = tl.load(sin_ptr + t * stride_cs + half).to(tl.float32)
            a = x1.to(tl.float32)
            b = x2.to(tl.float32)
            # x * cos + rotate_half(x) * sin, each product rounded to the dtype as the PyTorch path does
            y1 = ((a * cos).to(x1.dtype).to(tl.float32) + (-b * sin).to(x1.dtype).to(tl.float32)).to(x1.dtype)
            y2 = ((b * cos).to(x1.dtype).to(tl.float32) + (a * sin).to(x1.dtype).to(tl.float32)).to(x1.dtype)
        else:
            y1 = x1
            y2 = x2
        if head < HEADS:
            dst = q_ptr + (t * HEADS + head) * HEAD_DIM
        else:
            slot = tl.load(slots_ptr + t)
            which = (head - HEADS) // KV_HEADS  # 0: key, 1: value
            kv_head = (head - HEADS) % KV_HEADS
            dst = cache_ptr + which * stride_kv + slot * (KV_HEADS * stride_slot_head) + kv_head * stride_slot_head
        tl.store(dst + half, y1)
        tl.store(dst + HEAD_DIM // 2 + half, y2)
        if KEYS:  # a prefill attends over its own keys directly
            if head >= HEADS:
                if head < HEADS + KV_HEADS:
                    key = k_ptr + (t * KV_HEADS + head - HEADS) * HEAD_DIM
                    tl.store(key + half, y1)
                    tl.store(key + HEAD_DIM // 2 + half, y2)
