"""VLLMEngine: the Engine protocol on vLLM's in-process async engine (AsyncLLM, v1), GPU or CPU.

- One vLLM request per spec: token ids in, no detokenisation, per-spec seed, our own stop ids
  (vLLM's EOS handling off), max tokens clamped to the context. Automatic prefix caching is on,
  so MH proposals and SMC particles that fork from a cut reuse the prefix's KV blocks.
- Exact logp / logq / log_w per token, two tiers (vllm_params.py): Tier 2 (default where the
  model has a spare vocabulary id) returns all three from the sampling pass through the power
  logits processor (vllm_logits.py); Tier 1 (public API only, the oracle) adds a scoring pass.
  `engine.tier` may be switched at any time (both are wired whenever Tier 2 is possible).
- AsyncLLM binds to the event loop it starts on, so it lives on a BackgroundLoop thread; every
  caller's loop awaits through it. Token callbacks run on the caller's loop, in order; one that
  returns False ends its sequence at that token (reason "stop") and aborts the vLLM request.
  Cancelling the awaiting task aborts the call's requests before the CancelledError propagates.
  Specs whose draws need a scoring pass (Tier 1, or top_logprobs > 0) get their callbacks once
  that pass is done, still token by token and with the same stop semantics.
- A dead engine (its process gone) raises EngineDeadError from every call, naming vLLM's reason
  when its log shows one; `healthy` turns False. vLLM is imported here and in vllm_*.py only.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from vllm import TokensPrompt
from vllm.exceptions import VLLMClientError
from vllm.v1.engine.exceptions import EngineDeadError as VLLMEngineDeadError

from temper.decoding.engine import (
    EngineStats,
    Sample,
    SampleSpec,
    Scored,
    TokenCallback,
    check_fits,
    score_starts,
)
from temper.decoding.engines.background_loop import BackgroundLoop
from temper.decoding.engines.checkpoint import check_update, safetensors_files
from temper.decoding.engines.hf_tokenizer import HFTokenizer
from temper.decoding.engines.output_tee import OutputTee
from temper.decoding.engines.vllm_params import read_scores, sample_params, score_params
from temper.decoding.engines.vllm_sequence import SeqState
from temper.decoding.engines.vllm_start import EngineSetup, start_engine
from temper.decoding.errors import EngineDeadError, ParamError

log = logging.getLogger(__name__)
SEED_MASK = 2**63 - 1
NO_REASON = "its engine process stopped without logging an error (killed? out of memory?)"


class VLLMEngine:
    def __init__(self, setup: EngineSetup, *, name: str):
        self._llm = setup.llm
        self._bg: BackgroundLoop = setup.loop
        self._tee: OutputTee = setup.tee
        self.name = name
        self.tokenizer: HFTokenizer = setup.tokenizer
        self.eos_ids = self.tokenizer.eos_ids
        self.max_context = setup.max_model_len - 1  # a scored sequence needs one generated slot
        self.vocab_size = setup.vocab_size
        self.sentinel = setup.sentinel
        self.tier = setup.tier  # per call: 1 or 2 (2 only with a sentinel)
        self.default_tier = setup.tier
        self.model_path = setup.model_path
        self.runner = setup.runner  # "v1" or "v2": which logits-processor interface runs
        self.max_logprobs = setup.max_logprobs
        self.stats: EngineStats = setup.stats
        self.weight_version = 0  # weight updates applied so far
        self.transfer_backend = setup.transfer_backend  # vLLM's weight transfer ("nccl", "ipc") or None
        self._weights_lock = asyncio.Lock()
        self._ids = itertools.count()
        self._dead: str | None = None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, name: str | None = None, **options) -> VLLMEngine:
        """Start vLLM on a local HF model directory. Options (all keyword, see vllm_start.py):
        dtype, max_model_len, gpu_memory_utilization, tensor_parallel_size, kv_cache_bytes, block_size,
        tier ("auto", 1, 2), sentinel_id, seed, enforce_eager, max_logprobs, engine_args_extra
        (dict passed on to vLLM's AsyncEngineArgs). Raises EngineLoadError (one line, vLLM's reason)."""
        setup = start_engine(str(path), **options)
        return cls(setup, name=name or Path(path).name)

    # ---------------------------------------------------------------- health

    @property
    def healthy(self) -> bool:
        return self._dead is None and self._llm is not None and self._bg.alive and not self._llm.errored

    @property
    def queue_depth(self) -> int:
        """Requests vLLM has not finished (waiting or running)."""
        return self._llm.output_processor.get_num_unfinished_requests() if self._llm is not None else 0

    def _check_alive(self) -> None:
        if self._llm is None:
            raise EngineDeadError(f"engine {self.name!r}: closed")
        if not self.healthy:
            raise EngineDeadError(f"engine {self.name!r}: vLLM is not running: "
                                  f"{self._dead or self._tee.reason() or NO_REASON}")

    def _translate(self, exc: BaseException) -> BaseException:
        """vLLM's errors as the protocol's: a dead engine, or a request vLLM refused (ValueError)."""
        if isinstance(exc, VLLMEngineDeadError):
            # vLLM's own message only points at its log: give the log's root cause instead
            self._dead = self._tee.reason() or NO_REASON
            return EngineDeadError(f"engine {self.name!r}: vLLM engine died: {self._dead}")
        if isinstance(exc, VLLMClientError):
            return ValueError(f"vLLM refused the request: {exc}")
        return exc

    # ---------------------------------------------------------------- sample

    async def sample(self, specs: Sequence[SampleSpec], on_token: TokenCallback | None = None) -> list[Sample]:
        for spec in specs:
            check_fits(self.max_context, spec)
        if not specs:
            return []
        self._check_alive()
        tier = self.tier
        seqs, params = self._plan(specs, tier, streaming=on_token is not None)
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()
        finished = loop.create_future()

        def post(item) -> None:  # from the background loop
            loop.call_soon_threadsafe(inbox.put_nowait, item)

        def closed() -> None:
            loop.call_soon_threadsafe(lambda: finished.done() or finished.set_result(None))

        fut = self._bg.submit(self._generate(seqs, params, post, closed))
        try:
            await self._collect(seqs, inbox, on_token, tier)
            await asyncio.wrap_future(fut)
        except BaseException as exc:  # cancelled, a callback raised, or vLLM failed
            fut.cancel()  # cancels the background task: vLLM aborts every request of the call
            try:
                await asyncio.wait_for(asyncio.shield(finished), 30)
            except (TimeoutError, asyncio.CancelledError):
                pass
            err = self._translate(exc)
            if err is exc:
                raise
            raise err from None
        if any(s.deferred for s in seqs):
            await self._score_samples(seqs, tier)
            if on_token is not None:
                for i, s in enumerate(seqs):
                    if s.deferred:
                        s.deliver(i, on_token)
        return [s.result() for s in seqs]

    def _plan(self, specs: Sequence[SampleSpec], tier: int, streaming: bool) -> tuple[list[SeqState], list]:
        """One SeqState and one vLLM SamplingParams per spec."""
        call = next(self._ids)
        seqs, params = [], []
        for i, spec in enumerate(specs):
            if spec.top_logprobs > self.max_logprobs:
                raise ValueError(f"top_logprobs: at most {self.max_logprobs} on this engine, got {spec.top_logprobs}")
            deferred = (tier == 1 and not spec.greedy) or spec.top_logprobs > 0
            stops = frozenset(self.eos_ids if spec.stop_ids is None else spec.stop_ids)
            seqs.append(SeqState(spec, f"{self.name}-{call}-{i}", stops, deferred))
            seed = spec.seed if spec.seed is not None else secrets.randbits(63)
            params.append(sample_params(
                spec, tier=tier, max_tokens=min(spec.max_new_tokens, self.max_context - len(spec.prefix)),
                stops=sorted(stops), seed=seed & SEED_MASK, sentinel=self.sentinel, vocab_size=self.vocab_size,
                stream=streaming and not deferred))
        return seqs, params

    async def _generate(self, seqs: list[SeqState], params: list, post, closed) -> None:
        """Background loop: one vLLM stream per spec, every output posted to the caller."""

        async def one(i: int) -> None:
            prompt = TokensPrompt(prompt_token_ids=list(seqs[i].spec.prefix))
            async for out in self._llm.generate(prompt, params[i], seqs[i].rid):
                post((i, out))
            post((i, None))

        tasks = [asyncio.create_task(one(i)) for i in range(len(seqs))]
        try:
            await asyncio.gather(*tasks)
        except BaseException as exc:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if not isinstance(exc, asyncio.CancelledError):
                post((-1, exc))
            raise
        finally:
            closed()

    async def _collect(self, seqs: list[SeqState], inbox: asyncio.Queue, on_token: TokenCallback | None,
                       tier: int) -> None:
        """Caller's loop: fold outputs into the sequences, run callbacks, until all are done."""
        remaining = len(seqs)
        while remaining:
            i, out = await inbox.get()
            if i < 0:
                raise out
            seq = seqs[i]
            if out is None:
                seq.done = True
                remaining -= 1
                continue
            if seq.cut:
                continue  # outputs that were in flight when a callback stopped it
            if seq.fold(out, tier=tier, sentinel=self.sentinel, vocab_size=self.vocab_size,
                        on_token=None if seq.deferred else on_token, index=i):
                self._bg.submit(self._llm.abort(seq.rid))  # a callback ended it: stop vLLM too

    async def _score_samples(self, seqs: list[SeqState], tier: int) -> None:
        """The scoring pass: raw logp (Tier 1: then log_w = α·logp − logq) and top-k."""
        need = [s for s in seqs if s.deferred and s.tokens]
        k = max((s.spec.top_logprobs for s in need), default=0)
        scored = await self.score([list(s.spec.prefix) + s.tokens for s in need],
                                  [len(s.spec.prefix) for s in need], top_k=k)
        for s, sc in zip(need, scored, strict=True):
            s.apply_scores(sc, tier)

    # ---------------------------------------------------------------- score

    async def score(self, sequences: Sequence[Sequence[int]], start: int | Sequence[int] = 1,
                    top_k: int = 0, ranks: bool = False) -> list[Scored]:
        starts = score_starts(sequences, start, self.max_context)
        if not 0 <= top_k <= self.max_logprobs:
            raise ValueError(f"top_k: must be in [0, {self.max_logprobs}] (the engine's max_logprobs), got {top_k}")
        if not sequences:
            return []
        self._check_alive()
        call = next(self._ids)
        seqs = [list(s) for s in sequences]
        try:
            outs = await self._bg.call(self._prompt_logprobs(seqs, top_k, f"{self.name}-score-{call}"))
        except (VLLMEngineDeadError, VLLMClientError) as exc:
            raise self._translate(exc) from None
        return [
            read_scores(o.prompt_logprobs, s, s0, top_k, ranks) for o, s, s0 in zip(outs, seqs, starts, strict=True)
        ]

    async def _prompt_logprobs(self, seqs: list[list[int]], top_k: int, rid: str) -> list:
        params = score_params(top_k)

        async def one(i: int):
            final = None
            async for out in self._llm.generate(TokensPrompt(prompt_token_ids=seqs[i]), params, f"{rid}-{i}"):
                final = out
            return final

        return await asyncio.gather(*(one(i) for i in range(len(seqs))))

    async def on_vllm(self, fn):
        """Await fn(async_llm) on the engine's loop: direct access to vLLM's AsyncLLM for
        benchmarks and diagnostics (requests made this way bypass the engine's bookkeeping)."""
        self._check_alive()
        return await self._bg.call(fn(self._llm))

    # ---------------------------------------------------------------- weights and cache

    async def reset_prefix_cache(self) -> bool:
        """Drop every cached prefix block (vLLM refuses while requests run: returns False)."""
        self._check_alive()
        return await self._bg.call(self._llm.reset_prefix_cache())

    async def load_weights(self, path: str | os.PathLike | Sequence[str | os.PathLike]) -> int:
        """Load new weights (a checkpoint directory, or safetensors files) between engine steps:
        in-flight requests finish on the old weights, new ones wait, the prefix cache is cleared.
        Checked first against the served model's tensor names and shapes (WeightUpdateError
        naming the first mismatch, nothing changed). Returns the new weight_version."""
        files = safetensors_files(path)
        check_update(files, safetensors_files(self.model_path))
        self._check_alive()
        return await self._bg.call(self._swap_weights(files))

    async def _swap_weights(self, files: list[Path]) -> int:
        import tempfile

        async with self._weights_lock:  # one update at a time (background loop)
            await self._llm.pause_generation(mode="wait", clear_cache=True)
            try:
                # reload_weights reads a directory: stage the files as symlinks in a fresh one
                with tempfile.TemporaryDirectory(prefix="temper-weights-") as d:
                    for f in files:
                        os.symlink(f.resolve(), Path(d) / f.name)
                    await self._llm.collective_rpc("reload_weights", kwargs={"weights_path": d,
                                                                             "is_checkpoint_format": True})
                await self._llm.reset_prefix_cache()
                self.weight_version += 1  # before any request runs on the new weights
                return self.weight_version
            finally:
                await self._llm.resume_generation()

    async def weight_transfer(self, step: str, body: dict) -> dict:
        """One step of vLLM's own weight transfer from a trainer (NCCL or CUDA IPC, GPUs):
        init_weight_transfer_engine {init_info}, start_weight_update, update_weights
        {update_info}, finish_weight_update {weight_version?}. Generation pauses from start to
        finish (running requests end first); finishing clears the prefix cache and bumps
        weight_version. Needs an engine started with a weight-transfer backend."""
        if self.transfer_backend is None:
            raise ParamError(
                f"{step}: this engine has no weight-transfer backend; start temper with "
                "--weight-transfer-backend nccl (GPUs), or send checkpoints to /update_weights_from_disk",
                step,
            )
        self._check_alive()
        return await self._bg.call(self._transfer_step(step, body))

    async def _transfer_step(self, step: str, body: dict) -> dict:
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest, WeightTransferUpdateRequest

        llm = self._llm
        if step == "init_weight_transfer_engine":
            await llm.init_weight_transfer_engine(WeightTransferInitRequest(init_info=body.get("init_info", {})))
            return {"message": "Weight transfer initialized"}
        if step == "start_weight_update":
            await llm.pause_generation(mode="wait", clear_cache=True)
            await llm.start_weight_update()
            return {"message": "Weight update started"}
        if step == "update_weights":
            await llm.update_weights(WeightTransferUpdateRequest(update_info=body.get("update_info", {})))
            return {"message": "Weights updated"}
        if step == "finish_weight_update":
            try:
                await llm.finish_weight_update(body.get("weight_version"))
                await llm.reset_prefix_cache()
                self.weight_version += 1
            finally:
                await llm.resume_generation()
            return {"message": "Weight update finished", "weight_version": self.weight_version}
        raise ParamError(f"{step}: not a weight-transfer step", step)

    async def _shutdown(self) -> None:
        # the output handler first: stopping the engine processes under it logs a false alarm
        handler = getattr(self._llm, "output_handler", None)
        if handler is not None:
            handler.cancel()
            await asyncio.gather(handler, return_exceptions=True)
        self._llm.shutdown()

    async def close(self) -> None:
        if self._llm is None:
            return
        try:
            await self._bg.call(self._shutdown())
        except Exception:  # shutting down a dead engine may fail; the loop still stops
            log.debug("vLLM shutdown failed", exc_info=True)
        self._bg.stop()
        self._llm = None  # collected now, not at interpreter exit (its __del__ shuts down again)
