"""HFEngine: the Engine protocol on Hugging Face transformers, CPU or CUDA, fp32 or bf16.

- Continuous batching: every `sample` call queues its sequences; one scheduler task runs a
  decode step for all live sequences of all callers at once (ragged lengths, each sequence's
  KV in its own slot of preallocated buffers: hf_slots.py), admitting new sequences between
  steps without moving anyone else's KV (hf_scheduler.py).
- KV-prefix reuse: prefixes are looked up in a radix PrefixCache; only the uncached tail is
  prefilled. Finished sequences are inserted, so MH proposals and SMC particles that fork from
  a cut of an earlier sample recompute nothing but the cut's last token. The SampleSpec hints
  are honoured: `cache=False` samples are not inserted, `retain` pins the caller's state,
  `resident` samples stay in their slot for their continuation (SMC particles).
- Sampling goes through `triton_kernels.tempered_sample` with counter-based per-sequence seeds,
  so a seeded spec draws the same tokens whatever else shares its batch.

Model compute runs on one worker thread; bookkeeping and token callbacks on the event loop.
Not a paged-attention server: KV lives in dense per-batch tensors (vLLM is the GPU engine).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from temper.decoding.engine import (
    EngineStats,
    Sample,
    SampleSpec,
    Scored,
    TokenCallback,
    TokenDraw,
    check_fits,
    score_starts,
)
from temper.decoding.engines.checkpoint import read_checkpoint
from temper.decoding.engines.hf_sampling import score_chunk
from temper.decoding.engines.hf_scheduler import Scheduler
from temper.decoding.engines.hf_seq import SampleCall, Seq
from temper.decoding.engines.hf_tokenizer import HFTokenizer
from temper.decoding.engines.prefix_cache import PrefixCache
from temper.decoding.errors import EngineDeadError

log = logging.getLogger(__name__)

MAX_FAILURES = 3  # steps failing in a row before the engine gives up (healthy = False)

DEFAULT_MODEL_PATH = Path(__file__).resolve().parents[2] / "assets" / "demo"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CPU_AUTO_DTYPE = "float32"  # what dtype "auto" means on CPU, for every engine


class EngineLoadError(ValueError):
    """The model could not be loaded; the message says which path and why."""


def _resolve(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else CPU_AUTO_DTYPE
    if dtype not in DTYPES:
        raise EngineLoadError(f"dtype: must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EngineLoadError(f"device: {device!r} requested but CUDA is not available")
    return torch.device(device), DTYPES[dtype]


class HFEngine:
    def __init__(
        self,
        model,
        tokenizer,
        *,
        name: str = "model",
        prefix_cache_tokens: int = 65536,
        max_batch: int = 256,
        max_context: int | None = None,
    ):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.name = name
        cfg_eos = model.generation_config.eos_token_id if model.generation_config else None
        eos = [cfg_eos] if isinstance(cfg_eos, int) else list(cfg_eos or [])
        if tokenizer.eos_token_id is not None:
            eos.append(tokenizer.eos_token_id)
        self.eos_ids = tuple(dict.fromkeys(int(e) for e in eos))
        self.tokenizer = HFTokenizer(tokenizer, self.eos_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        ctx = getattr(model.config, "max_position_embeddings", None) or 2048
        self.max_context = min(ctx, max_context) if max_context else ctx
        self.max_batch = max_batch
        self.stats = EngineStats()
        self.weight_version = 0
        self.healthy = True  # False once the engine cannot recover (see _step_failed)
        self._failures = 0  # steps failed in a row
        self.prefix_cache = PrefixCache(prefix_cache_tokens, seq_dim=3)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"hf-{name}")
        self.scheduler = Scheduler(self.model, self.prefix_cache, self.stats, max_batch, self.pad_id)
        self._calls: set[SampleCall] = set()  # unresolved calls, so a failed step can fail them all
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        name: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        **kwargs,
    ) -> HFEngine:
        """Load a local HF causal-LM directory (or a hub id when online)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dev, dt = _resolve(device, dtype)
        path = str(path)
        # a local path that is not a directory is a typo, not a hub id: fail before any lookup
        looks_like_hub_id = path.count("/") == 1 and not path.startswith((".", "/", "~"))
        if not Path(path).is_dir() and not looks_like_hub_id:
            raise EngineLoadError(f"model: no model directory at {path!r}")
        try:
            tok = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dt).to(dev)
        except Exception as exc:  # transformers raises OSError/ValueError/HTTP errors
            raise EngineLoadError(f"model: cannot load {path!r}: {exc}") from exc
        return cls(model, tok, name=name or Path(path).name, **kwargs)

    # ---------------------------------------------------------------- public API

    @property
    def queue_depth(self) -> int:
        """Sequences waiting or running."""
        return self.scheduler.depth

    async def sample(self, specs: Sequence[SampleSpec], on_token: TokenCallback | None = None) -> list[Sample]:
        if not self.healthy:
            raise EngineDeadError(f"engine {self.name!r} cannot serve after repeated failures")
        for spec in specs:
            check_fits(self.max_context, spec)
        if not specs:
            return []
        self._ensure_worker()
        call = SampleCall(asyncio.get_running_loop().create_future(), on_token)
        for i, spec in enumerate(specs):
            seq = Seq(
                spec=spec,
                call=call,
                index=i,
                seed=spec.seed if spec.seed is not None else secrets.randbits(63),
                limit=min(spec.max_new_tokens, self.max_context - len(spec.prefix)),
                stops=frozenset(self.eos_ids if spec.stop_ids is None else spec.stop_ids),
            )
            call.seqs.append(seq)
            self.scheduler.waiting.append(seq)
        self._calls.add(call)
        self._wake.set()
        try:
            return await call.future
        except asyncio.CancelledError:
            call.cancelled = True  # the scheduler drops its sequences before the next step
            self._wake.set()
            raise
        finally:
            self._calls.discard(call)

    async def score(
        self,
        sequences: Sequence[Sequence[int]],
        start: int | Sequence[int] = 1,
        top_k: int = 0,
        ranks: bool = False,
    ) -> list[Scored]:
        if not self.healthy:
            raise EngineDeadError(f"engine {self.name!r} cannot serve after repeated failures")
        starts = score_starts(sequences, start, self.max_context)
        loop = asyncio.get_running_loop()
        seqs = [list(s) for s in sequences]
        return await loop.run_in_executor(self._pool, self._score, seqs, starts, top_k, ranks)

    async def load_weights(self, path: str) -> None:
        """Swap in a checkpoint's weights (see the Engine protocol). Refused while sequences are
        in flight: their KV was computed with the old weights (the server drains them first)."""
        if self.queue_depth:
            raise RuntimeError(f"load_weights: {self.queue_depth} sequences in flight; finish or cancel them first")
        params = self.model.state_dict()
        loop = asyncio.get_running_loop()
        tensors = await loop.run_in_executor(None, read_checkpoint, path, params)  # disk I/O, off the loop
        await loop.run_in_executor(self._pool, self._swap, tensors)  # the engine thread: between steps

    @torch.inference_mode()
    def _swap(self, tensors: dict[str, torch.Tensor]) -> None:
        params = self.model.state_dict()
        for name, t in tensors.items():
            params[name].copy_(t)
        self.prefix_cache.clear()  # cached KV belongs to the old weights
        self.weight_version += 1

    async def reset_prefix_cache(self) -> bool:
        await asyncio.get_running_loop().run_in_executor(self._pool, self.prefix_cache.clear)
        return True

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------- scheduler

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is not None and self._loop is loop and not self._task.done():
            return
        # a new event loop (e.g. successive asyncio.run calls): state of the old one is dead
        self.scheduler.reset()
        self._calls.clear()
        self._loop, self._wake = loop, asyncio.Event()
        self._task = loop.create_task(self._run(), name=f"hf-engine-{self.name}")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.scheduler.drop_cancelled()
            if not self.scheduler.busy:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                events = await loop.run_in_executor(self._pool, self.scheduler.step)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # fail the step's callers, keep serving the others
                self._step_failed(exc)
                continue
            self._failures = 0
            self._deliver(events)

    def _step_failed(self, exc: Exception) -> None:
        """A step raised (a bad tensor, an out-of-memory): the calls whose sequences were in it
        fail with the error, the batch is dropped (its KV may be half-written), the waiting
        sequences of other calls go on. MAX_FAILURES steps failing in a row mean the engine
        cannot recover: it fails everything and refuses new work (`healthy` turns False)."""
        self._failures += 1
        log.error("engine %s: step failed (%d in a row)", self.name, self._failures, exc_info=exc)
        stepping = self.scheduler.drop_batch()
        if self._failures >= MAX_FAILURES:
            self.healthy = False
            dead = EngineDeadError(f"engine {self.name!r} failed {self._failures} steps in a row: {exc}")
            self.scheduler.reset()
            for call in self._calls:
                call.fail(dead)
            return
        victims = {id(s.call): s.call for s in stepping}.values() if stepping else list(self._calls)
        for call in victims:  # a step that failed before taking anyone in fails the callers waiting
            call.fail(exc)

    def _deliver(self, events: list[tuple[Seq, int]]) -> None:
        """Run token callbacks (event-loop side) and resolve finished calls. A step appends at
        most one token per row (a row that drew its first token from a prefill skips that step's
        decode), so a callback that stops a row stops it exactly at the token it saw."""
        per_seq = collections.Counter(id(s) for s, _ in events)
        seen: dict[int, int] = {}  # id(seq) -> its token count at the event being delivered
        cut: set[int] = set()
        for seq, tok in events:
            call = seq.call
            key = id(seq)
            if key in cut:
                continue
            seen[key] = seen.get(key, len(seq.tokens) - per_seq[key]) + 1
            if call.on_token is not None and not call.cancelled:
                n = seen[key]  # this token is seq.tokens[n - 1]
                draw = TokenDraw(
                    tok,
                    seq.logp[n - 1],
                    seq.top_ids[n - 1] if seq.top_ids else None,
                    seq.top_lps[n - 1] if seq.top_lps else None,
                    log_w=seq.log_w[n - 1],
                    logq=seq.logq[n - 1],
                )
                try:
                    go_on = call.on_token(seq.index, draw)
                except Exception as exc:
                    call.fail(exc)
                    continue
                if not go_on:
                    cut.add(key)
                    seq.truncate(seen[key])
                    seq.finish("stop")
        for seq, _ in events:
            if seq.done and not seq.call.cancelled:
                seq.call.report(seq)

    # ---------------------------------------------------------------- worker thread

    @torch.inference_mode()
    def _score(self, seqs: list[list[int]], starts: list[int], top_k: int, ranks: bool) -> list[Scored]:
        out: list[Scored] = []
        for lo in range(0, len(seqs), max(1, self.max_batch)):
            chunk = seqs[lo : lo + self.max_batch]
            out += score_chunk(
                self.model, chunk, starts[lo : lo + len(chunk)], top_k, self.pad_id, self.device, ranks
            )
            self.stats.forward_passes += 1
            self.stats.forward_tokens += sum(len(c) for c in chunk)
        return out
