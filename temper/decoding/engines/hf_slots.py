"""The HF engine's running batch: every sequence's KV in a slot of preallocated buffers.

Layout, per layer: K and V [slots, kv_heads, L, head_dim], plus a mask [slots, L] of the
columns that hold a real token of the row. All rows share one column window [start, end):
each decode step writes the new token of every row into column `end` (in place, through a
transformers cache layer, SlotLayer) and attends over [start, end]; position ids carry each
row's true positions, so rows of any length share each forward pass.

Why slots: a sequence joins by writing its own KV into a free slot — nobody else's KV moves
(the previous design re-packed every running row whenever one joined, and DynamicCache
concatenated the whole cache at every step). A finished sequence can stay in its slot
(`resident` specs, e.g. SMC particles between checkpoints): a spec that continues exactly that
sequence adopts the slot with no copy, and further ones (resampled copies) copy only that row.
A row may then have masked columns in the middle (the steps it sat out): positions, not
columns, drive attention, so that is harmless.

Every row attends to at least one column in every step (an empty or finished row attends to the
garbage it writes itself, masked out afterwards): a fully masked row would give NaN keys.
The buffers grow by doubling (slots, columns) and are shifted only when the window runs into
an edge, so a step costs one column write per row and the attention over the window.
Not thread-safe: the engine's worker thread owns it.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

from temper.decoding.engines.hf_seq import Seq, SeqStatus

MIN_COLUMNS = 256


class SlotLayer(DynamicLayer):
    """A transformers cache layer that writes the step's keys / values into the batch's buffers
    and hands back a view of the window."""

    def __init__(self, batch: SlotBatch, layer: int):
        super().__init__()
        self.batch, self.layer = batch, layer
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        b = self.batch
        n = key_states.shape[0]
        b.k[self.layer][:n, :, b.end] = key_states[:, :, -1]
        b.v[self.layer][:n, :, b.end] = value_states[:, :, -1]
        return b.k[self.layer][:n, :, b.start : b.end + 1], b.v[self.layer][:n, :, b.start : b.end + 1]

    def get_seq_length(self) -> int:
        return self.batch.end - self.batch.start

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0


class SlotBatch:
    """Running (and parked) sequences in slots; see the module docstring."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device,
                 pad_id: int):
        self.shape = (layers, kv_heads, head_dim)
        self.dtype, self.device, self.pad_id = dtype, device, pad_id
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=device)
        self.rows: list[Seq | None] = []
        self.first = torch.zeros(0, dtype=torch.long)  # per slot: first column of its KV
        self.start = self.end = 0
        self._alloc(8, MIN_COLUMNS, 0)

    # ------------------------------------------------------------------ layout

    def _alloc(self, slots: int, columns: int, end: int) -> None:
        """(Re)allocate the buffers: `slots` × `columns`, the window moved to end at `end`."""
        nl, H, D = self.shape
        w, old = self.end - self.start, len(self.rows)
        k = [torch.zeros((slots, H, columns, D), dtype=self.dtype, device=self.device) for _ in range(nl)]
        v = [torch.zeros((slots, H, columns, D), dtype=self.dtype, device=self.device) for _ in range(nl)]
        mask = torch.zeros((slots, columns), dtype=torch.long, device=self.device)
        if old and w:
            for layer in range(nl):
                k[layer][:old, :, end - w : end] = self.k[layer][:, :, self.start : self.end]
                v[layer][:old, :, end - w : end] = self.v[layer][:, :, self.start : self.end]
            mask[:old, end - w : end] = self.mask[:, self.start : self.end]
        shift = end - self.end
        self.k, self.v, self.mask = k, v, mask
        self.first = torch.cat([self.first + shift, torch.zeros(slots - old, dtype=torch.long)])
        self.rows += [None] * (slots - old)
        self.start, self.end = end - w, end

    def _room(self, n: int) -> None:
        """Make room for a row of n columns left of `end` and one more column at `end`."""
        slots, columns = self.mask.shape
        if self.end >= n and self.end < columns:
            self.start = min(self.start, self.end - n)
            return
        w = max(self.end - self.start, n)
        self._alloc(slots, max(MIN_COLUMNS, 2 * (w + 1)), w)
        self.start = self.end - w

    def _slot(self) -> int:
        for i, r in enumerate(self.rows):
            if r is None:
                return i
        old = len(self.rows)
        self._alloc(2 * old, self.mask.shape[1], self.end)
        return old

    @property
    def used(self) -> int:
        """Slots up to the last occupied one: the rows every forward pass computes."""
        for i in range(len(self.rows) - 1, -1, -1):
            if self.rows[i] is not None:
                return i + 1
        return 0

    def occupied(self) -> list[Seq]:
        return [r for r in self.rows if r is not None]

    def live(self) -> list[Seq]:
        return [r for r in self.rows if r is not None and r.status is SeqStatus.RUNNING]

    # ------------------------------------------------------------------ rows

    def place(self, seq: Seq, kv: torch.Tensor | None, n: int) -> None:
        """Put seq in a free slot with KV [layers, 2, H, n, D] (None when n = 0)."""
        self._room(n)
        i = self._slot()
        self.mask[i].zero_()
        if n:
            for layer in range(self.shape[0]):
                self.k[layer][i, :, self.end - n : self.end] = kv[layer, 0]
                self.v[layer][i, :, self.end - n : self.end] = kv[layer, 1]
            self.mask[i, self.end - n : self.end] = 1
        self.first[i] = self.end - n
        self._bind(seq, i, n)

    def fork(self, src: int, seq: Seq) -> None:
        """Put seq in a free slot holding a copy of slot src's KV (a resampled particle)."""
        kv_len = self.rows[src].kv_len
        self._bind(seq, self._copy(src), kv_len)

    def adopt(self, src: int, seq: Seq) -> None:
        """seq continues the sequence parked in slot src: it takes the slot, no copy."""
        self._bind(seq, src, self.rows[src].kv_len)

    def _copy(self, src: int) -> int:
        """A free slot holding a copy of slot src (KV, mask)."""
        i = self._slot()
        self._copy_to(src, i)
        return i

    def _copy_to(self, src: int, dst: int) -> None:
        s = self.start
        for layer in range(self.shape[0]):
            self.k[layer][dst, :, s : self.end] = self.k[layer][src, :, s : self.end]
            self.v[layer][dst, :, s : self.end] = self.v[layer][src, :, s : self.end]
        self.mask[dst] = self.mask[src]
        self.first[dst] = self.first[src]

    def _bind(self, seq: Seq, i: int, kv_len: int) -> None:
        self.rows[i] = seq
        seq.slot, seq.kv_len, seq.kv = i, kv_len, None

    def release(self, seq: Seq) -> None:
        i = seq.slot
        if i is not None and self.rows[i] is seq:
            self.rows[i] = None
            self.mask[i].zero_()
        seq.slot = None

    def row_kv(self, seq: Seq) -> torch.Tensor:
        """The row's KV, [layers, 2, H, kv_len, D] (a copy, its masked columns left out)."""
        i = seq.slot
        cols = torch.nonzero(self.mask[i, self.start : self.end])[:, 0] + self.start
        return torch.stack([torch.stack([k[i].index_select(1, cols), v[i].index_select(1, cols)])
                            for k, v in zip(self.k, self.v, strict=True)])

    def compact(self) -> None:
        """Fill every empty slot below the last occupied one with the last occupied row (one row
        copy per move; a slot empties once per finished sequence), so forward passes compute
        no empty rows; then drop window columns no row uses."""
        while True:
            used = self.used
            hole = next((i for i in range(used) if self.rows[i] is None), None)
            if hole is None:
                break
            seq = self.rows[used - 1]
            self._copy_to(used - 1, hole)
            self._bind(seq, hole, seq.kv_len)
            self.rows[used - 1] = None
            self.mask[used - 1].zero_()
        rows = self.occupied()
        if rows:
            self.start = max(self.start, int(min(self.first[r.slot] for r in rows)))

    # ------------------------------------------------------------------ step

    def forward(self, model, skip: set[int] = frozenset()) -> torch.Tensor:
        """Feed every running row (but those whose id is in `skip`) its pending token; returns
        next-token logits [used, V] fp32 (rows of other slots are garbage)."""
        self._room(0)
        B, dev = self.used, self.device
        live = [r is not None and r.status is SeqStatus.RUNNING and id(r) not in skip for r in self.rows[:B]]
        ids = torch.tensor([[r.pending if on else self.pad_id] for r, on in zip(self.rows[:B], live, strict=True)],
                           device=dev)
        pos = torch.tensor([[r.kv_len if on else 0] for r, on in zip(self.rows[:B], live, strict=True)], device=dev)
        self.mask[:B, self.end] = 1  # every row attends to at least its own new column
        cache = Cache(layers=[SlotLayer(self, layer) for layer in range(self.shape[0])])
        out = model(input_ids=ids, attention_mask=self.mask[:B, self.start : self.end + 1], position_ids=pos,
                    past_key_values=cache, use_cache=True)
        self.mask[:B, self.end] = torch.tensor(live, dtype=torch.long, device=dev)
        self.end += 1
        for r, on in zip(self.rows[:B], live, strict=True):
            if on:
                r.kv_len += 1
        return out.logits[:, -1].float()
