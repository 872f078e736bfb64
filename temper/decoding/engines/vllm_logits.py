"""Tier 2 of the vLLM engine: a logits processor that makes vLLM's sampler draw from the power
proposal and hands back log Z per token in the same pass (research/vllm_extension.md §9a).

For a request that carries `extra_args["temper"]` (α, top-k, top-p, sentinel S, value C), the
processor replaces the request's logits row ℓ with `tempered_logits` (α·log p on the kept set,
−inf elsewhere; the sentinel column excluded from the kept set) and then writes C into column S.
The request runs at temperature 1 with vLLM's own top-k/top-p off, so vLLM samples exactly
q = softmax(row) (S never: C is far below every kept value), and in processed-logprobs mode the
two values it returns per token are
  v_x = log q(x)             (the sampled token)
  v_S = C − LSE(row) = C − log Z_kept   (the sentinel, requested through logprob_token_ids)
so log_w = C − v_S, logq = v_x, logp = (v_x + log_w) / α. `decode_tier2` does that arithmetic.
S must be a vocabulary id the model never emits (a padded id past the tokenizer); it is excluded
from q like a truncated token, so log_w stays exact for the proposal actually sampled.

Two classes share `apply_power_rows` (the per-row math is `triton_kernels.tempered_logits`, one
implementation): `PowerLogitsProcessorV1` for vLLM's V1 interface (model runner V1: CPU, or
VLLM_USE_V2_MODEL_RUNNER=0) and `PowerLogitsProcessorV2` for model runner V2 (the GPU default).
This module imports vLLM: only the vLLM engine and vLLM's own processes load it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, process_dict_updates
from vllm.v1.sample.logits_processor import LogitsProcessor as LogitsProcessorV1Base
from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as LogitsProcessorV2Base

from temper.triton_kernels.tempered_logits import tempered_logits

EXTRA_KEY = "temper"  # SamplingParams.extra_args[EXTRA_KEY] marks a Tier 2 request


@dataclass(frozen=True, slots=True)
class PowerRow:
    """One Tier 2 request's proposal settings, as it travels in extra_args."""

    alpha: float
    top_k: int
    top_p: float
    sentinel: int
    sentinel_value: float

    def to_extra(self) -> dict:
        return {EXTRA_KEY: [self.alpha, self.top_k, self.top_p, self.sentinel, self.sentinel_value]}

    @classmethod
    def from_params(cls, params: SamplingParams) -> PowerRow | None:
        raw = (params.extra_args or {}).get(EXTRA_KEY)
        if raw is None:
            return None
        a, k, p, s, c = raw
        return cls(float(a), int(k), float(p), int(s), float(c))


def sentinel_value(alpha: float, vocab_size: int) -> float:
    """C for the sentinel column: far enough below every kept value that neither Gumbel noise
    (≤ ~23 in fp32) can pick it nor e^C counts against Z_kept (≥ V^−α, as the largest kept
    probability is ≥ 1/V): C ≤ −α·ln V − 110. As small in magnitude as that allows, since
    log_w = C − v_S carries fp32 rounding of about |C|·6e-8."""
    return -(alpha * math.log(vocab_size) + 110.0)


def validate_row(row: PowerRow, params: SamplingParams, vocab_size: int | None = None) -> None:
    """The request shape Tier 2 needs (raise ValueError naming the field)."""
    if not (row.alpha > 0 and math.isfinite(row.alpha)):
        raise ValueError(f"extra_args.{EXTRA_KEY}: alpha must be finite and > 0, got {row.alpha}")
    if params.temperature != 1.0 or params.top_k not in (0, -1, None) or params.top_p != 1.0:
        raise ValueError(f"extra_args.{EXTRA_KEY}: needs temperature 1 and vLLM's top_k/top_p off "
                         "(the processor applies α, top-k and top-p itself)")
    if params.logprob_token_ids != [row.sentinel]:
        raise ValueError(f"extra_args.{EXTRA_KEY}: logprob_token_ids must be [sentinel]")
    if vocab_size is not None and not 0 <= row.sentinel < vocab_size:
        raise ValueError(f"extra_args.{EXTRA_KEY}: sentinel {row.sentinel} outside the vocabulary")


def apply_power_rows(logits: torch.Tensor, rows: Sequence[int], settings: Sequence[PowerRow]) -> torch.Tensor:
    """In place on logits [num_rows, V] (fp32): each listed row becomes its power proposal, with
    the sentinel column set to its C. Rows of one sentinel id at a time (one per engine)."""
    if not rows:
        return logits
    dev = logits.device
    for s in sorted({r.sentinel for r in settings}):
        pick = [j for j, r in enumerate(settings) if r.sentinel == s]
        idx = [rows[j] for j in pick]
        sub = [settings[j] for j in pick]
        full = len(idx) == logits.shape[0] and idx == list(range(logits.shape[0]))
        index = torch.tensor(idx, dtype=torch.long, device=dev)
        src = logits if full else logits.index_select(0, index)  # [b, V]
        # top-k / top-p tensors only when a row truncates (known here on the host: no sync)
        k = torch.tensor([r.top_k for r in sub], dtype=torch.int64, device=dev) if any(r.top_k for r in sub) else None
        p = (torch.tensor([r.top_p for r in sub], dtype=torch.float32, device=dev)
             if any(r.top_p < 1 for r in sub) else None)
        alpha = torch.tensor([r.alpha for r in sub], dtype=torch.float32, device=dev)
        out = tempered_logits(src, alpha, k, p, exclude=s).logits
        out[:, s] = torch.tensor([r.sentinel_value for r in sub], dtype=torch.float32, device=dev)
        if full:
            logits.copy_(out)
        else:
            logits.index_copy_(0, index, out)
    return logits


class PowerLogitsProcessorV1(LogitsProcessorV1Base):
    """V1 interface: state keyed by persistent-batch row, kept current by `update_state`."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.rows: dict[int, PowerRow] = {}
        self.vocab_size = vllm_config.model_config.get_vocab_size() if vllm_config is not None else None

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        row = PowerRow.from_params(sampling_params)
        if row is not None:
            validate_row(row, sampling_params)

    def is_argmax_invariant(self) -> bool:
        return False  # it rescales and truncates rows, so it must run before vLLM's temperature

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.rows, batch_update, lambda params, _, __: PowerRow.from_params(params))

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        rows = sorted(i for i in self.rows if i < logits.shape[0])
        return apply_power_rows(logits, rows, [self.rows[i] for i in rows])


class PowerLogitsProcessorV2(LogitsProcessorV2Base):
    """V2 interface (model runner V2): state keyed by request slot, rows mapped through the
    step's host-side `idx_mapping_np` (no device sync). Without speculative decoding a request
    owns exactly one logits row, which is what this processor assumes (and checks)."""

    def __init__(self, vllm_config, req_states):
        self.slots: dict[int, PowerRow] = {}

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        row = PowerRow.from_params(sampling_params)
        if row is not None:
            validate_row(row, sampling_params)

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        row = PowerRow.from_params(sampling_params)
        if row is None:
            self.slots.pop(req_idx, None)  # a recycled slot: forget its previous occupant
            return False
        self.slots[req_idx] = row
        return True

    def apply(self, logits: torch.Tensor, ctx) -> torch.Tensor:
        if not self.slots:
            return logits
        slots = np.asarray(ctx.idx_mapping_np)
        if len(slots) != logits.shape[0]:
            raise RuntimeError("PowerLogitsProcessorV2: one logits row per request is required "
                               "(speculative decoding is not supported with temper's Tier 2)")
        rows = [i for i, s in enumerate(slots.tolist()) if s in self.slots]
        return apply_power_rows(logits, rows, [self.slots[int(slots[i])] for i in rows])
