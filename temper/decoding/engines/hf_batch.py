"""The HF engine's batched KV cache (dense, left-padded) and prefill.

A DecodeBatch holds every running sequence's KV right-aligned in one transformers
DynamicCache: [B, kv_heads, Lb, head_dim] per layer, with an attention mask for the left
padding and explicit position ids, so rows of different lengths share each forward pass.
It is rebuilt (rows re-packed) only when sequences join or enough of them have finished.

KV blocks handed to the prefix cache are [layers, 2, kv_heads, tokens, head_dim].
"""

from __future__ import annotations

import torch

from temper.decoding.engines.hf_seq import Seq
from temper.decoding.engines.prefix_cache import PrefixCache


def cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer, each [B, kv_heads, L, head_dim], across transformers versions."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


def new_cache(kv: torch.Tensor | None):
    """A DynamicCache holding stacked KV [layers, 2, B, kv_heads, L, head_dim] (empty for None)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer in range(kv.shape[0] if kv is not None else 0):
        cache.update(kv[layer, 0], kv[layer, 1], layer)
    return cache


def pack_right(kvs: list[torch.Tensor | None], width: int) -> torch.Tensor:
    """Per-row KV [layers, 2, H, L_i, D] (None = empty) → one [layers, 2, B, H, width, D],
    each row right-aligned after zero left padding (the padding is masked out)."""
    ref = next(kv for kv in kvs if kv is not None)
    nl, _, H, _, D = ref.shape
    packed = ref.new_zeros((nl, 2, len(kvs), H, width, D))
    for i, kv in enumerate(kvs):
        if kv is not None and kv.shape[3]:
            packed[:, :, i, :, width - kv.shape[3] :] = kv
    return packed


def prefill(
    model,
    prefix_cache: PrefixCache,
    prefixes: list[tuple[int, ...]],
    hits: list[tuple[int, torch.Tensor | None]],
    device: torch.device,
    pad_id: int,
) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """Run the uncached tails of several prefixes in one forward pass.

    `hits` are the prefix-cache matches (tokens, KV) of each prefix, at most len - 1 long: the
    last token is always recomputed, its logits are needed. Returns per prefix: (KV [layers, 2,
    H, L, D], last-position logits [V] f32, tokens served from the cache).

    Layout per row: [left pad | cached m_i] as the past, then [new n_i | right pad] as input.
    Right padding keeps every query's row non-empty (a fully masked row would give NaN keys
    that poison later layers), and `logits_to_keep` picks each row's last real position.
    """
    B = len(prefixes)
    m = [h[0] for h in hits]
    n = [len(p) - mi for p, mi in zip(prefixes, m, strict=True)]
    P, N = max(m), max(n)
    ids = torch.full((B, N), pad_id, dtype=torch.long)
    pos = torch.zeros((B, N), dtype=torch.long)
    attn = torch.zeros((B, P + N), dtype=torch.long)
    for i, (p, mi, ni) in enumerate(zip(prefixes, m, n, strict=True)):
        ids[i, :ni] = torch.tensor(p[mi:])
        pos[i, :ni] = torch.arange(mi, mi + ni)
        attn[i, P - mi : P + ni] = 1
    past = new_cache(pack_right([h[1] for h in hits], P) if P else None)
    keep = sorted(set(ni - 1 for ni in n))
    out = model(
        input_ids=ids.to(device),
        attention_mask=attn.to(device),
        position_ids=pos.to(device),
        past_key_values=past,
        cache_position=torch.arange(P, P + N, device=device),
        use_cache=True,
        logits_to_keep=torch.tensor(keep, device=device),
    )
    layers = cache_layers(out.past_key_values)
    results = []
    for i, (p, mi, ni) in enumerate(zip(prefixes, m, n, strict=True)):
        # the row's real positions: cached [P - m_i, P) then new [P, P + n_i)
        kv = torch.stack([torch.stack([k[i, :, P - mi : P + ni], v[i, :, P - mi : P + ni]]) for k, v in layers])
        prefix_cache.insert(p, kv)
        results.append((kv, out.logits[i, keep.index(ni - 1)].float(), mi))
    return results


def prefill_groups(lengths: list[int], slack: int = 256) -> list[list[int]]:
    """Indices grouped for batched prefill so padding stays small: sorted by new-token count,
    a group grows while its padded size stays within twice its real tokens plus `slack`."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        trial = cur + [i]
        real = sum(lengths[j] for j in trial)
        if cur and len(trial) * lengths[i] > 2 * real + slack:
            groups.append(cur)
            trial = [i]
        cur = trial
    if cur:
        groups.append(cur)
    return groups


class DecodeBatch:
    """Running rows sharing one left-padded DynamicCache."""

    def __init__(self, rows: list[Seq], cache, attn: torch.Tensor, pad_id: int):
        self.rows = rows
        self.cache = cache
        self.attn = attn  # [B, Lb] 1 = real token, 0 = padding
        self.pad_id = pad_id
        self._slot = {id(r): i for i, r in enumerate(rows)}

    def live(self) -> list[Seq]:
        return [r for r in self.rows if not r.done]

    def needs_compaction(self) -> bool:
        dead = sum(r.done for r in self.rows)
        return dead > 0 and 2 * dead >= len(self.rows)

    def row_kv(self, row: Seq) -> torch.Tensor:
        """The row's valid KV, [layers, 2, H, kv_len, D] (a copy)."""
        i, n = self._slot[id(row)], row.kv_len
        return torch.stack(
            [torch.stack([k[i, :, -n:], v[i, :, -n:]]) for k, v in cache_layers(self.cache)]
        )

    @classmethod
    def build(cls, rows: list[Seq], old: DecodeBatch | None, pad_id: int) -> DecodeBatch:
        """Pack rows right-aligned: rows already batched bring their KV from `old`, new rows
        their prefill KV."""
        kvs = [r.kv if r.kv is not None else old.row_kv(r) for r in rows]
        Lb = max(r.kv_len for r in rows)
        packed = pack_right(kvs, Lb)
        attn = torch.zeros((len(rows), Lb), dtype=torch.long, device=packed.device)
        for i, r in enumerate(rows):
            attn[i, Lb - r.kv_len :] = 1
            r.kv = None
        return cls(rows, new_cache(packed), attn, pad_id)

    def forward(self, model) -> torch.Tensor:
        """Feed every row's last token; returns next-token logits [B, V] in fp32."""
        dev = self.attn.device
        ids = torch.tensor(
            [[r.tokens[-1] if not r.done else self.pad_id] for r in self.rows], device=dev
        )
        pos = torch.tensor([[r.kv_len] for r in self.rows], device=dev)
        self.attn = torch.cat([self.attn, torch.ones_like(self.attn[:, :1])], dim=1)
        Lb = self.attn.shape[1]
        out = model(
            input_ids=ids,
            attention_mask=self.attn,
            position_ids=pos,
            past_key_values=self.cache,
            cache_position=torch.arange(Lb - 1, Lb, device=dev),
            use_cache=True,
        )
        self.cache = out.past_key_values
        for r in self.rows:
            if not r.done:
                r.kv_len += 1
        return out.logits[:, -1].float()
