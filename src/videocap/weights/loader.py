"""Build a model on the meta device and fill it from a checkpoint's safetensors shards, tensor by tensor.

Owns: finding a checkpoint's weight files, reading safetensors headers and tensors, renaming checkpoint keys to a
model's parameter names through a family's declarative `KeyMap`, and the error that names every missing,
unexpected or misshapen tensor. It does not know any family's names (those live in models/<family>/weights.py)
and does not download (weights/hub.py does).

Memory: tensors are read with plain file reads into one reusable host buffer and copied straight into the
parameter on the target device, so host memory holds one tensor at a time (not a shard, not the model) when the
target is a GPU. Files are not memory-mapped: mapped pages of a multi-GB shard would count against the process.
Pickled checkpoints (opt-in, `allow_pickle`) are the exception: torch.load reads each whole file into memory.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from videocap.errors import CheckpointError, UnsafeCheckpointError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")


@dataclass(frozen=True)
class KeyMap:
    """A checkpoint layout: ordered (checkpoint prefix → parameter prefix) rules; the first match wins."""

    name: str
    rules: tuple[tuple[str, str], ...]

    def rename(self, key: str) -> str | None:
        for source, target in self.rules:
            if key.startswith(source):
                return target + key[len(source):]
        return None

    def unrename(self, name: str) -> str | None:
        """The checkpoint key this layout stores parameter `name` under (the first rule that can produce it)."""
        for source, target in self.rules:
            if name.startswith(target):
                return source + name[len(target):]
        return None


class RowPermuted:
    """A parameter whose rows a checkpoint stores in another order: checkpoint row i is row `perm[i]` of `tensor`.

    A module's `checkpoint_views()` may give one in place of a tensor view (InternLM2's fused `wqkv` interleaves
    each key/value head's query heads with it; videocap keeps all queries, then keys, then values). The loader
    only needs `shape` and `copy_`; `read()` gives the tensor back in the checkpoint's order.
    """

    def __init__(self, tensor: torch.Tensor, perm: torch.Tensor):
        assert perm.shape == tensor.shape[:1], "one destination row per checkpoint row"
        self.tensor, self.perm = tensor, perm

    @property
    def shape(self) -> torch.Size:
        return self.tensor.shape

    def copy_(self, src: torch.Tensor) -> None:
        src = src.to(device=self.tensor.device, dtype=self.tensor.dtype)
        self.tensor.index_copy_(0, self.perm.to(self.tensor.device), src)

    def read(self) -> torch.Tensor:
        return self.tensor.index_select(0, self.perm.to(self.tensor.device))


@dataclass(frozen=True)
class TensorEntry:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


def weight_files(model_dir: Path, allow_pickle: bool = False) -> list[Path]:
    """The checkpoint's safetensors files (all shards); pickled files only when allowed and no safetensors exist."""
    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if files:
        return files
    pickled = sorted(p for p in model_dir.iterdir() if p.suffix in PICKLE_SUFFIXES) if model_dir.is_dir() else []
    if pickled and not allow_pickle:
        names = ", ".join(p.name for p in pickled)
        raise UnsafeCheckpointError(
            f"{model_dir}: only pickled weights ({names}); loading pickles can run code. "
            "Convert them to safetensors, or pass --allow-pickle if you trust the source"
        )
    if not pickled:
        raise CheckpointError(f"{model_dir}: no weight files (*.safetensors)")
    return pickled


def read_index(path: Path) -> dict[str, TensorEntry]:
    """Parse one safetensors file's header: name → where its bytes are."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if head.startswith(b"version "):
                raise CheckpointError(f"{path}: a Git LFS pointer, not the weights (clone with git-lfs, or download)")
            (length,) = struct.unpack("<Q", head)
            if length > min(size - 8, 100 << 20):
                raise CheckpointError(f"{path}: not a safetensors file (its header length {length} is impossible)")
            header = json.loads(f.read(length))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file: {e}") from e
    base = 8 + length
    entries = {}
    try:
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            if meta["dtype"] not in DTYPES:
                raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {meta['dtype']}")
            start, end = meta["data_offsets"]
            shape = tuple(int(n) for n in meta["shape"])
            if not 0 <= start <= end <= size - base:
                raise CheckpointError(f"{path}: tensor {name} lies outside the file (truncated download?)")
            dtype = DTYPES[meta["dtype"]]
            if end - start != math.prod(shape) * dtype.itemsize:
                raise CheckpointError(f"{path}: tensor {name} has {end - start} bytes for shape {list(shape)}")
            entries[name] = TensorEntry(path, DTYPES[meta["dtype"]], shape, base + start, base + end)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: malformed safetensors header: {type(e).__name__}: {e}") from e
    return entries


class TensorReader:
    """Reads tensors into one growing host buffer; each result is a view valid until the next read."""

    def __init__(self):
        self.buffer = torch.empty(0, dtype=torch.uint8)
        self.handles: dict[Path, object] = {}

    def read(self, entry: TensorEntry) -> torch.Tensor:
        n = entry.end - entry.start
        if self.buffer.numel() < n:
            self.buffer = torch.empty(n, dtype=torch.uint8)
        f = self.handles.get(entry.file) or self.handles.setdefault(entry.file, open(entry.file, "rb"))
        f.seek(entry.start)
        view = self.buffer[:n]
        if f.readinto(memoryview(view.numpy())) != n:
            raise CheckpointError(f"{entry.file}: file ends inside a tensor (truncated download?)")
        return view.view(entry.dtype).view(entry.shape) if n else torch.empty(entry.shape, dtype=entry.dtype)

    def close(self):
        for f in self.handles.values():
            f.close()
        self.handles.clear()


def checkpoint_keys(model_dir: Path) -> list[str]:
    """Tensor names of a safetensors checkpoint, from the headers alone (empty for pickled checkpoints)."""
    return [name for name, _ in iter_checkpoint(sorted(Path(model_dir).glob("*.safetensors")))]


def iter_checkpoint(files: list[Path]) -> Iterator[tuple[str, TensorEntry]]:
    for path in files:
        yield from read_index(path).items()


def build_on_meta(factory: Callable[[], nn.Module], device: torch.device | str, dtype: torch.dtype) -> nn.Module:
    """Construct with no memory (meta), cast, then allocate uninitialised storage on `device`."""
    with torch.device("meta"):
        model = factory()
    model = model.to(dtype=dtype).to_empty(device=device)
    if hasattr(model, "tie_weights"):  # to_empty gives tied parameters separate storage: tie them again
        model.tie_weights()
    return model


def load_weights(
    model: nn.Module,
    model_dir: Path,
    pick_layout: Callable[[list[str]], KeyMap],
    *,
    ignore: Callable[[str], bool] = lambda key: False,
    expect: Callable[[str], bool] = lambda name: True,
    allow_pickle: bool = False,
    progress: Callable[[int], None] | None = None,
) -> KeyMap:
    """Copy every checkpoint tensor into `model`'s parameter of the mapped name (casting to its dtype).

    `ignore(key)`: checkpoint tensors known not to be weights of this model (derived buffers, the text half of a
    CLIP checkpoint). `expect(name)`: the parameters this checkpoint must fill (all, unless another checkpoint
    supplies the rest). Raises CheckpointError naming every expected parameter left missing, every other
    checkpoint tensor unused, and every shape mismatch. Returns the layout used.
    """
    files = weight_files(model_dir, allow_pickle)
    if files[0].suffix in PICKLE_SUFFIXES:
        tensors = {}
        for path in files:  # weights_only: tensors and containers only, no arbitrary objects
            tensors.update(torch.load(path, map_location="cpu", weights_only=True))
        entries = list(tensors.items())
    else:
        entries = list(iter_checkpoint(files))
    layout = pick_layout([name for name, _ in entries])
    params, owner = loadable_tensors(model)
    loaded: set[object] = set()
    unexpected, mismatched = [], []
    reader = TensorReader()
    try:
        with torch.no_grad():
            for key, entry in entries:
                target = layout.rename(key)
                if target is None or target not in params:
                    if not ignore(key):
                        unexpected.append(key)
                    continue
                param = params[target]
                shape = entry.shape if isinstance(entry, TensorEntry) else tuple(entry.shape)
                if shape != tuple(param.shape):
                    mismatched.append(f"{key} {list(shape)} vs {target} {list(param.shape)}")
                    continue
                tensor = reader.read(entry) if isinstance(entry, TensorEntry) else entry
                param.copy_(tensor)
                loaded.add(owner[target])
                if progress:
                    progress(tensor.numel() * tensor.element_size())
    finally:
        reader.close()
    missing = [name for name in params if expect(name) and owner[name] not in loaded]
    missing = list({owner[name]: name for name in reversed(missing)}.values())[::-1]  # one name per tied tensor
    if missing or unexpected or mismatched:
        parts = [f"{model_dir}: the checkpoint ({layout.name} layout) does not fit the model"]
        if missing:
            parts.append(f"missing {len(missing)}: {summarise(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {summarise(unexpected)}")
        if mismatched:
            parts.append(f"wrong shape {len(mismatched)}: {'; '.join(mismatched[:20])}")
        raise CheckpointError(" · ".join(parts))
    return layout


def loadable_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor | RowPermuted], dict[str, object]]:
    """Every tensor a checkpoint fills, by checkpoint-style name, and what each one belongs to.

    Plain parameters under their own names (tied ones share an owner, so either name fills them); fused
    projections (modules with `checkpoint_views()`) by their parts' names, e.g. `...self_attn.q_proj.weight`
    for a row block of `...self_attn.qkv_proj.weight`; re-ordered ones as `RowPermuted` targets.
    """
    tensors: dict[str, torch.Tensor | RowPermuted] = {}
    owner: dict[str, object] = {}
    fused: set[str] = set()
    for prefix, module in model.named_modules():
        views = getattr(module, "checkpoint_views", None)
        if views is None:
            continue
        parent = prefix.rpartition(".")[0]
        fused.update(f"{prefix}.{n}" for n, _ in module.named_parameters(recurse=False))
        for name, view in views().items():
            full = f"{parent}.{name}" if parent else name
            tensors[full], owner[full] = view, full
    for name, p in model.named_parameters(remove_duplicate=False):
        if name not in fused:
            tensors[name], owner[name] = p, id(p)
    return tensors, owner


def summarise(keys: list[str]) -> str:
    """Every key, with runs over layer numbers folded: `llm.layers.{0-31}.mlp.up_proj.weight`."""
    groups: dict[str, list[int]] = {}
    order: list[str] = []
    for key in keys:
        m = re.search(r"\.(\d+)\.", key)
        pattern = key[: m.start()] + ".{}." + key[m.end():] if m else key
        if pattern not in groups:
            groups[pattern] = []
            order.append(pattern)
        if m:
            groups[pattern].append(int(m.group(1)))
    out = []
    for pattern in order:
        nums = sorted(set(groups[pattern]))
        if not nums:
            out.append(pattern)
        elif len(nums) == 1:
            out.append(pattern.replace("{}", str(nums[0])))
        elif nums == list(range(nums[0], nums[-1] + 1)):
            out.append(pattern.replace("{}", f"{{{nums[0]}-{nums[-1]}}}"))
        else:
            out.append(pattern.replace("{}", "{" + ",".join(map(str, nums)) + "}"))
    return ", ".join(out)
