"""New weights for a served model, checked before anything changes: which .safetensors files a
path names (a checkpoint directory, sharded or not, one file, or a list of files), their
tensors' names and shapes (read from the headers, nothing loaded), and whether they fit the
served model. A checkpoint may hold a subset of the parameters (a partial update).

A mismatch is a WeightUpdateError (a ParamError naming `path`, HTTP 400) that names the first
offending file or tensor, so the served weights stay as they were. Not here: the swap itself
(each engine applies tensors its own way, between steps) or any engine state.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from temper.decoding.errors import ParamError

PathLike = str | os.PathLike


class WeightUpdateError(ParamError):
    """A weight update was refused; the message names the path or tensor and why."""

    def __init__(self, message: str):
        super().__init__(message, "path")


def safetensors_files(path: PathLike | Sequence[PathLike]) -> list[Path]:
    """A checkpoint directory (its *.safetensors), one file, or a list of files → the files."""
    if isinstance(path, str | os.PathLike):
        p = Path(path).expanduser()
        if p.is_dir():
            files = sorted(p.glob("*.safetensors"))
            if not files:
                raise WeightUpdateError(f"path: no *.safetensors files in {str(p)!r}")
            return files
        paths = [p]
    else:
        paths = [Path(x).expanduser() for x in path]
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


def check_shapes(got: Mapping[str, tuple[int, ...]], want: Mapping[str, tuple[int, ...]]) -> None:
    """Every tensor of the update must be a parameter of the model, with the same shape."""
    if not got:
        raise WeightUpdateError("path: the checkpoint holds no tensors")
    for name, shape in got.items():
        if name not in want:
            raise WeightUpdateError(f"path: tensor {name!r} is not a parameter of the served model")
        if tuple(shape) != tuple(want[name]):
            raise WeightUpdateError(
                f"path: tensor {name!r} has shape {list(shape)}, the served model's is {list(want[name])}"
            )


def check_update(new: Sequence[Path], reference: Sequence[Path]) -> None:
    """The update's tensors against the served model's own checkpoint files (an engine whose
    parameters live in another process compares headers with headers)."""
    check_shapes(tensor_shapes(new), tensor_shapes(reference))


def read_checkpoint(path: PathLike | Sequence[PathLike], params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, cast to the parameters' dtypes (on the CPU), after checking
    every name and shape against `params` (name → the model's tensor)."""
    from safetensors.torch import load_file

    files = safetensors_files(path)
    check_shapes(tensor_shapes(files), {name: tuple(t.shape) for name, t in params.items()})
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update({name: t.to(params[name].dtype) for name, t in load_file(str(f)).items()})
    return out
