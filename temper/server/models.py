"""The served models: `--model NAME=PATH` specs turned into engines, by name, default first.

Start-up only. Every failure is a ModelLoadError whose message names the flag value and the
reason, so `temper serve` can print it and exit instead of showing a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from temper.decoding.engine import Engine
from temper.server.config import ServerConfig

BUNDLED_MODEL_NAME = "tiny-chat"


class ModelLoadError(ValueError):
    """A --model value that cannot be served."""


def parse_model_spec(spec: str) -> tuple[str, str]:
    """ "NAME=PATH" → (NAME, PATH); a bare PATH is served under the PATH as given (vLLM's rule).
    The first "=" splits, unless what precedes it looks like a path."""
    name, sep, path = spec.partition("=")
    if not sep or "/" in name or not name.strip():
        name, path = spec, spec
    name, path = name.strip(), path.strip()
    if not path:
        raise ModelLoadError(f"--model {spec!r}: empty path (expected NAME=PATH or PATH)")
    return name, path


def model_specs(config: ServerConfig) -> list[tuple[str, str]]:
    """(name, path) for every model to serve, the default first."""
    from temper.decoding.engines.hf import DEFAULT_MODEL_PATH

    if not config.model:
        return [(BUNDLED_MODEL_NAME, str(DEFAULT_MODEL_PATH))]
    specs = [parse_model_spec(s) for s in config.model]
    names = [n for n, _ in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ModelLoadError(f"--model: the name {dupes[0]!r} is given twice")
    return specs


def load_engines(config: ServerConfig) -> dict[str, Engine]:
    """Load every --model (HF transformers engines); the dict's first entry is the default."""
    import torch

    from temper.decoding.engines.hf import EngineLoadError, HFEngine

    # Process-wide by nature (torch has one intra-op pool); set once, at start-up.
    torch.set_num_threads(config.cpu_threads or max(1, (os.cpu_count() or 2) // 2))
    engines: dict[str, Engine] = {}
    for name, path in model_specs(config):
        flag = f"--model {path}" if name == path else f"--model {name}={path}"
        if path.startswith((".", "/", "~")) and not Path(path).expanduser().is_dir():
            raise ModelLoadError(f"{flag}: no model directory at {path!r}")
        try:
            engines[name] = HFEngine.from_pretrained(
                str(Path(path).expanduser()) if path.startswith("~") else path,
                name=name,
                device=config.device,
                dtype=config.dtype,
                prefix_cache_tokens=config.prefix_cache_tokens,
                max_batch=config.max_batch,
                max_context=config.max_context,
            )
        except EngineLoadError as exc:
            raise ModelLoadError(f"{flag}: {exc}") from None
    return engines


def check_engines(engines: Mapping[str, Engine]) -> dict[str, Engine]:
    if not engines:
        raise ModelLoadError("no models to serve")
    return dict(engines)
