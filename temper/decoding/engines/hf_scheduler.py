"""The HF engine's scheduling step, run on its worker thread: retire or park finished rows,
admit waiting sequences into slots of the running batch (hf_slots.SlotBatch), one decode step
for every running row.

Where an admitted sequence's KV comes from, cheapest first:
  1. a parked row holding exactly its prefix (a `resident` sample it continues, e.g. an SMC
     particle after a checkpoint): the first such sequence adopts the slot, the others (its
     resampled copies) copy that row;
  2. the prefix cache, when it holds all but the last prefix token (MH proposals from a cut,
     rollouts): the KV goes straight into a slot and the next decode step computes the last
     token — no prefill pass (unless other sequences need one this step: then these ride in
     it too, so a mixed admission still costs one pass);
  3. otherwise a batched prefill of the uncached tail, whose last logits give the first token.
Finished rows hand their KV to the prefix cache unless their spec said `cache=False` (or they
were aborted); `retain` pins the caller's state in the cache while the sample runs, so samples
branching off it (rejected proposals) are evicted, never the state they branch from. Resident rows stay parked in their
slot for PARK_STEPS steps (or until their slot is needed) before they are cached too.

Not thread-safe: one worker thread calls `step`; the event loop touches `waiting` only
between steps.
"""

from __future__ import annotations

import collections

import torch

from temper.decoding.engine import EngineStats
from temper.decoding.engines.hf_batch import prefill, prefill_groups
from temper.decoding.engines.hf_sampling import sample_rows
from temper.decoding.engines.hf_seq import Seq, SeqStatus
from temper.decoding.engines.hf_slots import SlotBatch
from temper.decoding.engines.prefix_cache import PrefixCache

PARK_STEPS = 4  # how long a finished resident row waits in its slot for its continuation


class Scheduler:
    def __init__(self, model, prefix_cache: PrefixCache, stats: EngineStats, max_batch: int, pad_id: int):
        self.model, self.prefix_cache, self.stats = model, prefix_cache, stats
        self.device = next(model.parameters()).device
        self.max_batch, self.pad_id = max_batch, pad_id
        self.waiting: collections.deque[Seq] = collections.deque()
        self.batch: SlotBatch | None = None
        self.steps = 0
        self.stepping: list[Seq] = []  # the sequences of the step in progress (failure isolation)

    def new_batch(self) -> SlotBatch:
        cfg = self.model.config
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        dtype = next(self.model.parameters()).dtype
        return SlotBatch(cfg.num_hidden_layers, kv_heads, head_dim, dtype, self.device, self.pad_id)

    def reset(self) -> None:
        self.waiting.clear()
        self.batch = None
        self.prefix_cache.unpin_all()  # the samples that held pins are gone

    def drop_batch(self) -> list[Seq]:
        """After a failed step: drop the batch (its KV may be half-written) and return the
        sequences that were in that step; the waiting ones stay queued."""
        stepping, self.stepping = self.stepping, []
        for seq in stepping:
            if seq.pinned:
                self.prefix_cache.unpin(seq.spec.retain, seq.pinned)
                seq.pinned = 0
        self.batch = None
        return stepping

    @property
    def busy(self) -> bool:
        return bool(self.waiting) or (self.batch is not None and bool(self.batch.live()))

    @property
    def depth(self) -> int:
        return len(self.waiting) + (len(self.batch.live()) if self.batch is not None else 0)

    def drop_cancelled(self) -> None:
        if any(s.call.cancelled for s in self.waiting):
            self.waiting = collections.deque(s for s in self.waiting if not s.call.cancelled)
        for s in self.batch.occupied() if self.batch is not None else ():
            if s.call.cancelled:
                s.finish("abort")  # an aborted row's KV is not cached (see retire)

    # ------------------------------------------------------------------ the step

    @torch.inference_mode()
    def step(self) -> list[tuple[Seq, int]]:
        """One step; returns (sequence, token) for every token drawn."""
        if self.batch is None:
            self.batch = self.new_batch()
        self.steps += 1
        self.stepping = list(self.batch.occupied())
        self.finish_rows()
        fresh, events = self.admit()
        batch = self.batch
        live = [r for r in batch.live() if id(r) not in fresh]  # rows that drew at prefill wait a step
        if live:
            logits = batch.forward(self.model, skip=fresh)  # [used, V]
            self.stats.forward_passes += 1
            self.stats.forward_tokens += batch.used
            events += self._sample(live, logits[[r.slot for r in live]])
        self.finish_rows()  # now, so the callers' next calls can already reuse their KV
        batch.compact()
        return events

    def _sample(self, rows: list[Seq], logits: torch.Tensor) -> list[tuple[Seq, int]]:
        events = sample_rows(rows, logits, only_live=False)
        self.stats.generated_tokens += len(events)
        return events

    def finish_rows(self) -> None:
        """Finished rows: park the resident ones, cache and free the others; expire old parks."""
        for row in self.batch.occupied():
            if row.status is not SeqStatus.FINISHED:
                continue
            if row.parked_at is None and row.spec.resident and row.reason != "abort":
                row.parked_at = self.steps
            elif row.parked_at is None or self.steps - row.parked_at > PARK_STEPS or row.reason == "abort":
                self.retire(row)

    def retire(self, row: Seq) -> None:
        """Hand a finished row's KV (prefix + all but its last token) to the prefix cache."""
        row.status = SeqStatus.RETIRED
        if row.pinned:
            self.prefix_cache.unpin(row.spec.retain, row.pinned)
            row.pinned = 0
        if row.reason != "abort" and row.spec.cache and self.prefix_cache.enabled:
            kv = self.batch.row_kv(row)
            self.prefix_cache.insert(row.sequence, kv[:, :, :, : len(row.sequence) - 1])
        self.batch.release(row)

    # ------------------------------------------------------------------ admission

    def admit(self) -> tuple[set[int], list[tuple[Seq, int]]]:
        """Place waiting sequences into slots; returns the ids of those that drew their first
        token from a prefill (they skip this step's decode) and those draws."""
        batch = self.batch
        room = self.max_batch - len(batch.live())
        parked = {r.sequence: r for r in batch.occupied() if r.parked_at is not None}
        taken = []
        while self.waiting and room > 0:
            seq = self.waiting.popleft()
            if not seq.call.cancelled:
                taken.append(seq)
                self.stepping.append(seq)
                room -= 1
        self._drop_abandoned(parked, [parked.get(s.spec.prefix) for s in taken])
        adopted: set[int] = set()
        need: dict[tuple[int, ...], list[Seq]] = {}
        direct: list[tuple[Seq, torch.Tensor | None, int]] = []
        for seq in taken:
            if seq.spec.retain:  # the caller's state stays cached while this sample runs
                seq.pinned = self.prefix_cache.pin(seq.spec.retain)
            src = parked.get(seq.spec.prefix)
            if src is not None:
                self._continue(seq, src, adopted)
                continue
            self._make_room(parked)
            n, kv = self.prefix_cache.match(seq.spec.prefix, limit=len(seq.spec.prefix) - 1)
            self._count(seq, n)
            if n == len(seq.spec.prefix) - 1:
                direct.append((seq, kv, n))
            else:
                need.setdefault(seq.spec.prefix, []).append(seq)
        for seq, kv, n in direct:
            if need:
                need.setdefault(seq.spec.prefix, []).append(seq)
            else:
                self._join(seq, kv, n)
        return self._prefill(need)

    def _drop_abandoned(self, parked: dict, continued: list[Seq | None]) -> None:
        """Parked rows whose caller has just continued some of its parked rows but not these
        (particles that resampling dropped): cache and free them now, before the copies of the
        survivors need slots."""
        keep = {id(r) for r in continued if r is not None}
        moved_on = {id(r.call) for r in continued if r is not None}
        for key, row in list(parked.items()):
            if id(row.call) in moved_on and id(row) not in keep:
                self.retire(row)
                del parked[key]

    def _continue(self, seq: Seq, src: Seq, adopted: set[int]) -> None:
        """seq's prefix is exactly the parked row src: the first such sequence adopts its slot
        (src is done with it; its KV stays, no copy), the next ones copy that slot's row. Both
        happen before this step's forward pass, so the slot still holds src's KV."""
        if id(src) in adopted:
            self.batch.fork(src.slot, seq)
        else:
            adopted.add(id(src))
            src.status = SeqStatus.RETIRED
            if src.pinned:
                self.prefix_cache.unpin(src.spec.retain, src.pinned)
                src.pinned = 0
            self.batch.adopt(src.slot, seq)
        seq.status, seq.pending = SeqStatus.RUNNING, seq.spec.prefix[-1]
        self._count(seq, len(seq.spec.prefix) - 1)

    def _join(self, seq: Seq, kv: torch.Tensor | None, n: int) -> None:
        self.batch.place(seq, kv, n)
        seq.status, seq.pending = SeqStatus.RUNNING, seq.spec.prefix[-1]

    def _count(self, seq: Seq, cached: int) -> None:
        seq.cached_prefix, seq.computed_prefix = cached, len(seq.spec.prefix) - cached
        self.stats.prefix_lookups += 1
        self.stats.prefix_query_tokens += len(seq.spec.prefix)
        self.stats.prefix_hit_tokens += cached

    def _make_room(self, parked: dict) -> None:
        """At the slot limit, free the oldest parked row (it goes to the prefix cache)."""
        batch = self.batch
        if any(r is None for r in batch.rows) or len(batch.rows) < self.max_batch:
            return
        old = [r for r in parked.values() if r.status is SeqStatus.FINISHED and r.slot is not None]
        if old:
            victim = min(old, key=lambda r: r.parked_at)
            self.retire(victim)
            parked.pop(victim.sequence, None)

    def _prefill(self, need: dict[tuple[int, ...], list[Seq]]) -> tuple[set[int], list[tuple[Seq, int]]]:
        """Prefill each distinct prefix's uncached tail once (siblings share it); the last
        logits give each sibling its first token."""
        if not need:
            return set(), []
        prefixes = list(need)
        hits = [self.prefix_cache.match(p, limit=len(p) - 1) for p in prefixes]
        rows, logits = [], []
        for idx in prefill_groups([len(p) - h[0] for p, h in zip(prefixes, hits, strict=True)]):
            chunk = [prefixes[i] for i in idx]
            insert = [any(s.spec.cache for s in need[p]) for p in chunk]
            results = prefill(self.model, self.prefix_cache, chunk, [hits[i] for i in idx], self.device,
                              self.pad_id, insert)
            self.stats.forward_passes += 1
            for prefix, (kv, last_logits, cached) in zip(chunk, results, strict=True):
                self.stats.forward_tokens += len(prefix) - cached
                for s in need[prefix]:
                    self.batch.place(s, kv, len(prefix))
                    s.status = SeqStatus.RUNNING
                    rows.append(s)
                    logits.append(last_logits)
        return {id(s) for s in rows}, self._sample(rows, torch.stack(logits))

