"""The hardware roofline for LLaVA-NeXT captioning: what the device allows, from two measured rates and the
model's shapes. Used by benchmarks/throughput.py; no model weights involved.

Measured: the bf16 matmul rate (square n×n×n matmuls, 2n³ FLOPs each) and the device copy bandwidth (a large
tensor copied, bytes read + bytes written). From the config (see `Shapes`):

  prefill FLOPs (one prompt of T tokens) = 2·P_layers·T + 2·V·d + 4·L·(H·hd)·T(T+1)/2
      P_layers = L·(d·(H + 2·KVH)·hd + H·hd·d + 3·d·ff): every decoder matmul weight (q, k, v, o, gate, up, down);
      2·V·d: the output head on the last position only; the last term is causal attention (QKᵀ and PV, 2 FLOPs a
      multiply-add, each query against the keys up to itself).
  vision FLOPs (one image of n tiles) = n·[Lv·(2·Pv·t + 4·t²·dv) + 2·(3·p²·dv)·(t−1) + 2·(dv·d + d·d)·(t−1)]
      t = 577 tokens a tile (576 patches + CLS); Lv = the layers run up to the feature layer (23 of 24 for layer
      −2); Pv = 4·dv² + 2·dv·ffv a CLIP layer; then the patch convolution and the two-layer projector.
  decode step, B sequences holding C context tokens in all:
      bytes = W + C·kv,  W = (P_layers + V·d)·2 (bf16 weights read once a step), kv = 2·L·KVH·hd·2 a token
      FLOPs = 2·(P_layers + V·d)·B + 4·L·(H·hd)·C
      seconds = max(bytes / copy bandwidth, FLOPs / matmul rate)
  roofline seconds for N videos = N·(prefill + vision FLOPs) / matmul rate + Σ over decode steps of the above.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

FORMULAS = {
    "prefill_flops": "2*P_layers*T + 2*V*d + 4*L*(H*hd)*T*(T+1)/2, P_layers = L*(d*(H+2*KVH)*hd + H*hd*d + 3*d*ff)",
    "vision_flops": "tiles*(Lv*(2*Pv*t + 4*t^2*dv) + 2*3*p^2*dv*(t-1) + 2*(dv*d + d*d)*(t-1)), "
                    "Pv = 4*dv^2 + 2*dv*ffv, t = 577, Lv = layers up to the feature layer",
    "decode_step_s": "max((W + C*kv) / copy_bw, (2*(P_layers + V*d)*B + 4*L*(H*hd)*C) / matmul_rate), "
                     "W = (P_layers + V*d)*elem, kv = 2*L*KVH*hd*elem (elem = 2 bytes, bf16), C = context tokens of the "
                     "B running sequences",
    "roofline_s": "N*(prefill_flops + vision_flops)/matmul_rate + sum over decode steps of decode_step_s",
}


@dataclass(frozen=True)
class Shapes:
    L: int  # decoder layers
    d: int  # hidden size
    H: int  # attention heads
    KVH: int  # key/value heads
    hd: int  # head dim
    ff: int  # FFN size
    V: int  # vocabulary
    Lv: int  # vision layers run (up to the feature layer)
    dv: int  # vision hidden size
    ffv: int  # vision FFN size
    p: int  # patch size
    t: int  # tokens a tile, CLS included
    elem: int = 2  # bytes a weight / cache element

    @classmethod
    def of(cls, cfg, elem: int = 2) -> Shapes:
        """From videocap's LlavaNextConfig; `elem` bytes a weight and cache element (2: bf16)."""
        text, vision = cfg.text, cfg.vision
        layer = cfg.vision_feature_layer
        return cls(
            L=text.num_layers, d=text.hidden_size, H=text.num_heads, KVH=text.num_kv_heads, hd=text.head_dim,
            ff=text.intermediate_size, V=text.vocab_size,
            Lv=layer if layer >= 0 else vision.num_layers + 1 + layer, dv=vision.hidden_size,
            ffv=vision.intermediate_size, p=vision.patch_size, t=vision.patches_per_side**2 + 1, elem=elem,
        )

    @property
    def layer_params(self) -> int:
        return self.L * (self.d * (self.H + 2 * self.KVH) * self.hd + self.H * self.hd * self.d + 3 * self.d * self.ff)

    @property
    def weight_bytes(self) -> int:
        return (self.layer_params + self.V * self.d) * self.elem

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.L * self.KVH * self.hd * self.elem

    def prefill_flops(self, tokens: int) -> float:
        attn = 4 * self.L * self.H * self.hd * tokens * (tokens + 1) / 2
        return 2 * self.layer_params * tokens + 2 * self.V * self.d + attn

    def vision_flops(self, tiles: int) -> float:
        t, dv = self.t, self.dv
        layer = 2 * (4 * dv * dv + 2 * dv * self.ffv) * t + 4 * t * t * dv
        patch = 2 * 3 * self.p**2 * dv * (t - 1)
        projector = 2 * (dv * self.d + self.d * self.d) * (t - 1)
        return tiles * (self.Lv * layer + patch + projector)

    def decode_step_s(self, batch: int, context: int, hw: Hardware) -> float:
        bytes_ = self.weight_bytes + context * self.kv_bytes_per_token
        flops = 2 * (self.layer_params + self.V * self.d) * batch + 4 * self.L * self.H * self.hd * context
        return max(bytes_ / hw.copy_bytes_per_s, flops / hw.matmul_flops_per_s)

    def inputs(self) -> dict:
        return {**asdict(self), "P_layers": self.layer_params, "W_bytes": self.weight_bytes,
                "kv_bytes_per_token": self.kv_bytes_per_token}


@dataclass(frozen=True)
class Hardware:
    matmul_flops_per_s: float
    copy_bytes_per_s: float
    matmul_n: int
    copy_bytes: int


def measure_hardware(device: torch.device, tiny: bool) -> Hardware:
    """bf16 n³ matmuls and a large device-to-device copy, each the best of a few timed rounds after a warm-up."""
    n, copy_bytes, rounds = (256, 32 << 20, 3) if tiny else (8192, 4 << 30, 5)
    dtype = torch.float32 if tiny else torch.bfloat16
    return Hardware(matmul_rate(n, dtype, device, rounds), copy_rate(copy_bytes, device, rounds), n, copy_bytes)


def matmul_rate(n: int, dtype: torch.dtype, device: torch.device, rounds: int, reps: int = 20) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    return 2 * n**3 * reps / best_of(lambda: [torch.mm(a, b, out=c) for _ in range(reps)], device, rounds)


def copy_rate(size: int, device: torch.device, rounds: int, reps: int = 10) -> float:
    src = torch.ones(size // 2, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    return 2 * size * reps / best_of(lambda: [dst.copy_(src) for _ in range(reps)], device, rounds)  # read + write


def best_of(fn, device: torch.device, rounds: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def roofline(shapes: Shapes, hw: Hardware, *, videos: int, prompt_tokens: int, tiles: int, new_tokens: int,
             decode_steps: list[tuple[int, int]] | None = None, max_batch: int | None = None) -> dict:
    """Roofline seconds and videos/s for `videos` requests: prefill and vision at the matmul rate, then decode
    steps at the memory (or matmul) bound. `decode_steps`: the (batch, context tokens) of each decode step the
    engine actually ran; without them, waves of `max_batch` sequences decoding `new_tokens` together."""
    prefill_flops = shapes.prefill_flops(prompt_tokens)
    vision_flops = shapes.vision_flops(tiles)
    prefill_s = videos * (prefill_flops + vision_flops) / hw.matmul_flops_per_s
    if decode_steps is None:
        batch = max(1, min(videos, max_batch or videos))
        decode_steps = []
        for start in range(0, videos, batch):
            b = min(batch, videos - start)
            # the first new token comes from prefill; new_tokens - 1 decode steps follow
            decode_steps += [(b, b * (prompt_tokens + k + 1)) for k in range(new_tokens - 1)]
    decode_s = sum(shapes.decode_step_s(b, c, hw) for b, c in decode_steps)
    total = prefill_s + decode_s
    steps = max(1, len(decode_steps))
    return {
        "videos_per_s": videos / total, "seconds": total, "prefill_vision_s": prefill_s, "decode_s": decode_s,
        "decode_steps": len(decode_steps), "mean_decode_batch": sum(b for b, _ in decode_steps) / steps,
        "prefill_flops_per_video": prefill_flops, "vision_flops_per_video": vision_flops,
    }


def single(shapes: Shapes, hw: Hardware, *, prompt_tokens: int, tiles: int, new_tokens: int) -> dict:
    """One request alone: time to first token = prefill + vision at the matmul rate; decode at batch 1."""
    ttft = (shapes.prefill_flops(prompt_tokens) + shapes.vision_flops(tiles)) / hw.matmul_flops_per_s
    mean_context = prompt_tokens + new_tokens / 2
    step = shapes.decode_step_s(1, int(mean_context), hw)
    return {"ttft_s": ttft, "decode_tok_s": 1 / step, "s_per_video": ttft + (new_tokens - 1) * step}
