"""The HF engine's prefill: the uncached tails of new sequences' prefixes in batched forward
passes, their KV handed to the prefix cache. (The running batch's KV lives in hf_slots.py.)

KV blocks handed to the prefix cache are [layers, 2, kv_heads, tokens, head_dim].
"""

from __future__ import annotations

import torch

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
    insert: list[bool] | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """Run the uncached tails of several prefixes in one forward pass.

    `hits` are the prefix-cache matches (tokens, KV) of each prefix, at most len - 1 long: the
    last token is always recomputed, its logits are needed. `insert[i]` False: do not cache
    prefix i (its samples asked for no caching). Returns per prefix: (KV [layers, 2,
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
        if insert is None or insert[i]:
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


