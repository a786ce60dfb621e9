"""IXC2-4KHD's vision side on tiny random weights: the CLIP tower against transformers' CLIPVisionModel, the
checkpoint key map, the 2x2 merge and separator order against a direct restatement of the reference tower's
reshape/permute sequence, and batching."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from safetensors.torch import save_file

from videocap.errors import CheckpointError
from videocap.models.layers.clip import ClipVisionConfig
from videocap.models.xcomposer2 import hd
from videocap.models.xcomposer2.vision import (
    VISION_IGNORED_SUFFIXES,
    VISION_KEYS,
    VISION_OPTIONAL_PREFIXES,
    XComposerVision,
)
from videocap.weights.loader import load_weights

transformers = pytest.importorskip("transformers")

C = 32  # tiny CLIP width; tokens are 4C wide after the merge
HIDDEN = 48


@dataclass(frozen=True)
class TinyCfg:
    vision: ClipVisionConfig = ClipVisionConfig(hidden_size=C, intermediate_size=64, num_layers=2, num_heads=4)
    hidden_size: int = HIDDEN


@pytest.fixture(scope="module")
def reference():
    """The reference's parts on random weights: transformers' CLIPVisionModel, the two separators in the
    checkpoint's shapes, and vision_proj as build_vision_projector makes it (mlp2x_gelu)."""
    torch.manual_seed(0)
    v = TinyCfg.vision
    clip = transformers.CLIPVisionModel(
        transformers.CLIPVisionConfig(
            hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.num_layers,
            num_attention_heads=v.num_heads, image_size=336, patch_size=14, hidden_act="quick_gelu",
        )
    ).eval()
    with torch.no_grad():  # no zero-initialised layer norms: every parameter matters
        for p in clip.parameters():
            p.add_(0.02 * torch.randn_like(p))
    glb_gn = torch.randn(1, 1, 4 * C)
    sub_gn = torch.randn(1, 1, 1, 4 * C)
    proj = nn.Sequential(nn.Linear(4 * C, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, HIDDEN))
    return clip, glb_gn, sub_gn, proj


def checkpoint_of(reference) -> dict[str, torch.Tensor]:
    """The state dict under the trust_remote_code model's names."""
    clip, glb_gn, sub_gn, proj = reference
    sd = {f"vit.vision_tower.vision_model.{k}": t for k, t in clip.state_dict().items()}
    sd.update({f"vision_proj.{k}": t for k, t in proj.state_dict().items()})
    sd.update(plora_glb_GN=glb_gn, plora_sub_GN=sub_gn)
    return sd


@pytest.fixture(scope="module")
def ours(reference):
    model = XComposerVision(TinyCfg()).eval()
    params = {f"vision.{k}": t for k, t in model.state_dict().items()}
    with torch.no_grad():
        for key, tensor in checkpoint_of(reference).items():
            params[VISION_KEYS.rename(key)].copy_(tensor)
    return model


def test_key_map_names_every_parameter_once_with_its_shape(reference):
    model = XComposerVision(TinyCfg())
    names = {f"vision.{k}": t.shape for k, t in model.state_dict().items()}
    ckpt = checkpoint_of(reference)
    renamed = {VISION_KEYS.rename(k): t.shape for k, t in ckpt.items()}
    assert renamed == names  # no key unmapped, none left over, shapes equal (sub_GN is (1, 1, 1, 4C))
    assert {VISION_KEYS.unrename(n) for n in names} == set(ckpt)
    assert all(n in names for n in ("vision.clip.post_layernorm.weight", "vision.clip.post_layernorm.bias"))
    assert all(p.startswith("vision.clip.post_layernorm") for p in VISION_OPTIONAL_PREFIXES)


def test_clip_tower_matches_transformers_selected_layer(reference, ours):
    clip = reference[0]
    pixels = torch.randn(3, 3, 336, 336, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = clip(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
        mine = ours.clip.features(pixels, -1)
    assert mine.shape == theirs.shape == (3, 577, C)
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
    assert theirs.std() > 0.1


def reference_tower(clip, glb_gn, sub_gn, images):
    """The 4KHD CLIPVisionTower.forward, restated step by step (336 px tiles, 24x24 patches, 12x12 tokens)."""
    shapes, inputs = [], []
    for img in images:  # (1, 3, H, W) normalised HD pixels
        _, _, H, W = img.shape
        shapes.append([H // 336, W // 336])
        sub = img.reshape(1, 3, H // 336, 336, W // 336, 336).permute(0, 2, 4, 1, 3, 5).reshape(-1, 3, 336, 336)
        glb = torch.nn.functional.interpolate(img.float(), size=(336, 336), mode="bicubic").to(sub.dtype)
        inputs += [glb, sub]
    feats = clip(pixel_values=torch.cat(inputs), output_hidden_states=True).hidden_states[-1][:, 1:]
    return arrange_reference(feats, glb_gn, sub_gn, shapes)


def arrange_reference(feats, glb_gn, sub_gn, shapes):
    _, N, Cf = feats.shape
    H = int(N**0.5)
    outs, lens = [], []
    for h, w in shapes:
        B_ = h * w
        glb = feats[:1].reshape(1, H, H, Cf).reshape(1, H // 2, 2, H // 2, 2, Cf)
        glb = glb.permute(0, 1, 3, 2, 4, 5).reshape(1, H // 2, H // 2, 4 * Cf)
        glb = torch.cat([glb, sub_gn.repeat(1, H // 2, 1, 1)], dim=2).reshape(1, -1, 4 * Cf)
        sub = feats[1 : 1 + B_].reshape(B_, H, H, Cf).reshape(B_, H // 2, 2, H // 2, 2, Cf)
        sub = sub.permute(0, 1, 3, 2, 4, 5).reshape(B_, -1, 4 * Cf)
        sub = sub.reshape(1, h, w, H // 2, H // 2, -1).permute(0, 1, 3, 2, 4, 5)
        sub = sub.reshape(1, h * H // 2, w * H // 2, 4 * Cf)
        sub = torch.cat([sub, sub_gn.repeat(1, h * H // 2, 1, 1)], dim=2).reshape(1, -1, 4 * Cf)
        outs.append(torch.cat([glb, glb_gn, sub], dim=1))
        lens.append(outs[-1].shape[1])
        feats = feats[1 + B_:]
    return torch.cat(outs, dim=1), lens


def test_merge_and_separator_order_with_labelled_features(ours):
    """Each patch feature holds (tile, row, col); the arranged sequence must equal the reference's, and known
    positions must hold the patches and separators the layout says."""
    cols, rows, side = 3, 2, 24
    n = 1 + cols * rows
    t, r, c = torch.meshgrid(torch.arange(n), torch.arange(side), torch.arange(side), indexing="ij")
    feats = torch.stack([t, r, c], dim=-1).reshape(n, side * side, 3).float()  # (tiles, 576, 3)
    glb_gn = torch.full((1, 1, 12), -1.0)
    sub_gn = torch.full((1, 1, 1, 12), -2.0)
    expected, lens = arrange_reference(feats, glb_gn, sub_gn, [[rows, cols]])
    with torch.no_grad():
        ours.glb_GN.data, saved_glb = glb_gn.clone(), ours.glb_GN.data
        ours.sub_GN.data, saved_sub = sub_gn.clone(), ours.sub_GN.data
        try:
            mine = ours.arrange(ours.merge(feats), (cols, rows))
        finally:
            ours.glb_GN.data, ours.sub_GN.data = saved_glb, saved_sub
    assert mine.shape[0] == lens[0] == hd.num_image_tokens(cols, rows)
    assert torch.equal(mine, expected[0])

    def patch(tile, row, col):
        return [tile, row, col]

    # Token 0: the global view's 2x2 block at (0, 0): patches (0,0), (0,1), (1,0), (1,1), in that order.
    assert mine[0].tolist() == patch(0, 0, 0) + patch(0, 0, 1) + patch(0, 1, 0) + patch(0, 1, 1)
    assert mine[12].tolist() == [-2.0] * 12  # sub_GN ends each global row
    assert mine[13].tolist()[:3] == patch(0, 2, 0)  # the global view's second token row
    assert mine[156].tolist() == [-1.0] * 12  # then glb_GN, once
    first = 157  # the stitched map's first row runs through tiles 1, 2, 3 (grid row 0, columns 0..2)
    assert mine[first].tolist()[:3] == patch(1, 0, 0)
    assert mine[first + 12].tolist()[:3] == patch(2, 0, 0)
    assert mine[first + 24 + 11].tolist()[:3] == patch(3, 0, 22)
    assert mine[first + 36].tolist() == [-2.0] * 12  # sub_GN after each row of the stitched map
    assert mine[first + 37].tolist()[:3] == patch(1, 2, 0)  # next token row, back in tile 1
    second_grid_row = first + 12 * 37
    assert mine[second_grid_row].tolist()[:3] == patch(4, 0, 0)  # tile 4 = grid row 1, column 0
    assert mine[-1].tolist() == [-2.0] * 12


def test_forward_equals_the_reference_tower_then_vision_proj(reference, ours):
    clip, glb_gn, sub_gn, proj = reference
    g = torch.Generator().manual_seed(2)
    images = [torch.randn(1, 3, 336 * rows, 336 * cols, generator=g) for cols, rows in [(3, 2), (1, 3)]]
    with torch.no_grad():
        embeds, lens = reference_tower(clip, glb_gn, sub_gn, images)
        theirs = proj(embeds)[0].split(lens)
        tiles = [hd.tiles_of(img) for img in images]
        mine = ours(torch.cat([p for p, _ in tiles]), [grid for _, grid in tiles])
    assert [m.shape for m in mine] == [t.shape for t in theirs]
    for m, t in zip(mine, theirs):
        torch.testing.assert_close(m, t, rtol=1e-5, atol=1e-5)


GRIDS = [(2, 1), None, (1, 3), (3, 2)]


def test_a_batch_of_mixed_grids_equals_each_image_alone(ours):
    g = torch.Generator().manual_seed(4)
    pixels = [torch.randn(ours.tiles(grid), 3, 336, 336, generator=g) for grid in GRIDS]
    with torch.no_grad():
        batched = ours(torch.cat(pixels), GRIDS)
        alone = [ours(p, [grid])[0] for p, grid in zip(pixels, GRIDS)]
    for grid, b, a in zip(GRIDS, batched, alone):
        expected = 144 if grid is None else hd.num_image_tokens(*grid)
        assert b.shape == a.shape == (expected, HIDDEN)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_odd_patch_grids_are_refused():
    cfg = TinyCfg(vision=ClipVisionConfig(image_size=42, patch_size=14, hidden_size=C, intermediate_size=64,
                                          num_layers=1, num_heads=4))
    with pytest.raises(ValueError, match="even"):
        XComposerVision(cfg)


class Holder(nn.Module):
    """The model root as the family holds the vision side: `self.vision`."""

    def __init__(self):
        super().__init__()
        self.vision = XComposerVision(TinyCfg())


@pytest.mark.parametrize("with_post_layernorm", [True, False])
def test_the_loader_fills_every_parameter_from_the_reference_names(reference, tmp_path, with_post_layernorm):
    ckpt = {k: t.contiguous() for k, t in checkpoint_of(reference).items()}
    if not with_post_layernorm:  # as saved by the training code that swaps it for nn.Identity
        ckpt = {k: t for k, t in ckpt.items() if "post_layernorm" not in k}
    ckpt["vit.vision_tower.vision_model.embeddings.position_ids"] = torch.arange(577)[None]  # transformers < 4.31
    save_file(ckpt, str(tmp_path / "model.safetensors"))
    model = Holder()
    load_weights(
        model, tmp_path, lambda keys: VISION_KEYS, ignore=lambda k: k.endswith(VISION_IGNORED_SUFFIXES),
        expect=lambda name: not name.startswith(VISION_OPTIONAL_PREFIXES),
    )
    for key, tensor in ckpt.items():
        if not key.endswith(VISION_IGNORED_SUFFIXES):
            assert torch.equal(model.get_parameter(VISION_KEYS.rename(key)), tensor), key

    save_file({**ckpt, "vit.vision_tower.vision_model.extra": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected 1"):
        load_weights(Holder(), tmp_path, lambda keys: VISION_KEYS, ignore=lambda k: k.endswith(VISION_IGNORED_SUFFIXES))
