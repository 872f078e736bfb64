"""Reading new weights for a served model: a checkpoint directory of .safetensors files (sharded
or not) or a single .safetensors file → tensors keyed by the model's own parameter names, every
name and shape checked against the model before anything is handed back.

A checkpoint may hold a subset of the parameters (a partial update); a name the model does not
have, a shape that differs, or a checkpoint with no tensors at all is a ParamError naming
`path` and the first mismatch. Not the swap itself: engines apply the tensors between steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from temper.decoding.errors import ParamError


def checkpoint_files(path: str) -> list[Path]:
    """The .safetensors files of a checkpoint path, sorted; ParamError when there are none."""
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix != ".safetensors":
            raise ParamError(f"path: {path!r} is not a .safetensors file", "path")
        return [p]
    if p.is_dir():
        files = sorted(p.glob("*.safetensors"))
        if not files:
            raise ParamError(f"path: no .safetensors files in {path!r}", "path")
        return files
    raise ParamError(f"path: no checkpoint file or directory at {path!r}", "path")


def read_checkpoint(path: str, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, cast to the parameters' dtypes (on the CPU), after checking
    every name and shape against `params` (name → the model's tensor)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in checkpoint_files(path):
        try:
            tensors = load_file(str(f))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ParamError(f"path: cannot read {f.name}: {exc}", "path") from None
        for name, t in tensors.items():
            if name not in params:
                raise ParamError(f"path: {f.name} holds {name!r}, which the model has no parameter named", "path")
            want = tuple(params[name].shape)
            if tuple(t.shape) != want:
                raise ParamError(
                    f"path: {name!r} has shape {list(t.shape)} in {f.name}; the model's is {list(want)}", "path"
                )
            out[name] = t.to(params[name].dtype)
    if not out:
        raise ParamError(f"path: {path!r} holds no tensors", "path")
    return out
