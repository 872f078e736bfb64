"""Checkpoint checks for live weight updates: which safetensors files a path names, and whether
their tensors fit the served model (names and shapes), read from the file headers only.

Engines call `check_update(new, reference)` before touching any weight, so a bad update is
refused with the first mismatch named and the served weights unchanged. Not here: loading
tensors (each engine loads its own way) or any engine state.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


class WeightUpdateError(ValueError):
    """A weight update was refused; the message names the path or tensor and why."""


def safetensors_files(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """A checkpoint directory (its *.safetensors), one file, or a list of files → the files."""
    if isinstance(path, (str, os.PathLike)):
        p = Path(path)
        if p.is_dir():
            files = sorted(p.glob("*.safetensors"))
            if not files:
                raise WeightUpdateError(f"path: no *.safetensors files in {str(p)!r}")
            return files
        paths = [p]
    else:
        paths = [Path(x) for x in path]
        if not paths:
            raise WeightUpdateError("path: no files given")
    for p in paths:
        if not p.is_file():
            raise WeightUpdateError(f"path: {str(p)!r} does not exist")
        if p.suffix != ".safetensors":
            raise WeightUpdateError(f"path: {str(p)!r} is not a .safetensors file")
    return paths


def tensor_shapes(files: Sequence[Path]) -> dict[str, tuple[int, ...]]:
    """name → shape for every tensor in the files (headers only, nothing is loaded)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                for name in sf.keys():
                    shapes[name] = tuple(sf.get_slice(name).get_shape())
        except Exception as exc:  # safetensors raises its own error types for bad headers
            raise WeightUpdateError(f"path: cannot read {str(f)!r}: {exc}") from exc
    return shapes


def check_update(new: Sequence[Path], reference: Sequence[Path]) -> None:
    """Every tensor of `new` must exist in `reference` with the same shape (a partial update is
    allowed: tensors it does not name keep their values). Raises WeightUpdateError."""
    want = tensor_shapes(reference)
    got = tensor_shapes(new)
    if not got:
        raise WeightUpdateError("path: the checkpoint holds no tensors")
    for name, shape in got.items():
        if name not in want:
            raise WeightUpdateError(f"weights: tensor {name!r} is not a parameter of the served model")
        if shape != want[name]:
            raise WeightUpdateError(f"weights: tensor {name!r} has shape {list(shape)}, "
                                    f"the served model's is {list(want[name])}")
