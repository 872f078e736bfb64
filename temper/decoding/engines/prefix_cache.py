"""PrefixCache: a radix tree of KV states keyed by token ids, bounded by a token budget.

Sampling from a prefix that shares its first k tokens with anything cached computes only the
remaining tokens. Edges hold the KV of their tokens, so sequences that share a prefix share
its storage (MH proposals and SMC particles fork from common prefixes all the time).
Eviction drops least-recently-used leaves until the budget holds; pinned paths (a caller's
state while a sample branching off it is in flight: `pin` / `unpin`) are never evicted.

Tensor-agnostic: a KV block is any tensor whose `seq_dim` indexes token positions (the HF
engine stores [layers, 2, kv_heads, tokens, head_dim]). Not thread-safe: one owner thread.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch


class _Node:
    __slots__ = ("tokens", "kv", "children", "parent", "last_used", "pins")

    def __init__(self, tokens: tuple[int, ...], kv: torch.Tensor | None, parent: _Node | None):
        self.tokens = tokens  # edge label: the tokens this node adds to its parent's prefix
        self.kv = kv  # KV of exactly those tokens (None at the root)
        self.children: dict[int, _Node] = {}  # keyed by the first token of the child's edge
        self.parent = parent
        self.last_used = 0
        self.pins = 0  # callers holding this node (pin / unpin); a pinned leaf is never evicted


class PrefixCache:
    def __init__(self, max_tokens: int, seq_dim: int = 3):
        self.max_tokens = max_tokens
        self.seq_dim = seq_dim
        self.root = _Node((), None, None)
        self.total_tokens = 0
        self._clock = itertools.count(1)

    @property
    def enabled(self) -> bool:
        return self.max_tokens > 0

    def _common(self, edge: tuple[int, ...], tokens: Sequence[int], start: int) -> int:
        n = min(len(edge), len(tokens) - start)
        if tuple(tokens[start : start + n]) == edge[:n]:
            return n
        i = 0
        while i < n and edge[i] == tokens[start + i]:
            i += 1
        return i

    def match(self, tokens: Sequence[int], limit: int | None = None) -> tuple[int, torch.Tensor | None]:
        """Longest cached prefix of tokens[:limit] → (its length, its KV as one new tensor)."""
        tokens = tokens if limit is None else tokens[:limit]
        parts, pos = [], 0
        for child, k in self._path(tokens, split=False):
            parts.append(child.kv if k == len(child.tokens) else child.kv.narrow(self.seq_dim, 0, k))
            pos += k
        if pos == 0:
            return 0, None
        return pos, torch.cat(parts, dim=self.seq_dim)

    def pin(self, tokens: Sequence[int]) -> int:
        """Keep the cached prefix of `tokens` from eviction until `unpin(tokens, n)` with the
        returned n (how many tokens were cached, hence pinned). The path is split at n so that
        it ends on a node boundary; later splits inside it copy the count to both halves."""
        pos = 0
        for child, k in self._path(tokens, split=True):
            child.pins += 1
            pos += k
        return pos

    def unpin(self, tokens: Sequence[int], n: int) -> None:
        """Release a pin taken by `pin` (n: what it returned; the path ends on a node boundary)."""
        for child, _ in self._path(tokens[:n], split=False):
            child.pins -= 1

    def unpin_all(self) -> None:
        for node in self._nodes():
            node.pins = 0

    def _path(self, tokens: Sequence[int], split: bool):
        """The nodes along the cached prefix of `tokens`, each marked as just used, with how many
        of its tokens match: every edge fully but possibly the last (split there when `split`)."""
        if not self.enabled:
            return
        node, pos = self.root, 0
        now = next(self._clock)
        while pos < len(tokens):
            child = node.children.get(tokens[pos])
            if child is None:
                return
            k = self._common(child.tokens, tokens, pos)
            if k < len(child.tokens) and split:
                child = self._split(child, k)
            child.last_used = now
            yield child, k
            if k < len(child.tokens):
                return
            node, pos = child, pos + k

    def insert(self, tokens: Sequence[int], kv: torch.Tensor) -> None:
        """Cache kv (covering tokens[:kv.shape[seq_dim]]); only the uncached tail is stored."""
        if not self.enabled:
            return
        n = kv.shape[self.seq_dim]
        tokens = tuple(tokens[:n])
        node, pos = self.root, 0
        now = next(self._clock)
        while pos < n:
            child = node.children.get(tokens[pos])
            if child is None:
                tail = kv.narrow(self.seq_dim, pos, n - pos).clone()
                leaf = _Node(tokens[pos:], tail, node)
                leaf.last_used = now
                node.children[tokens[pos]] = leaf
                self.total_tokens += n - pos
                break
            k = self._common(child.tokens, tokens, pos)
            if k < len(child.tokens):
                child = self._split(child, k)
            child.last_used = now
            node, pos = child, pos + k
        self.evict()

    def _split(self, node: _Node, k: int) -> _Node:
        """Split node's edge after k tokens: parent → mid (k tokens) → node (the rest)."""
        mid = _Node(node.tokens[:k], node.kv.narrow(self.seq_dim, 0, k).clone(), node.parent)
        mid.last_used, mid.pins = node.last_used, node.pins
        node.parent.children[node.tokens[0]] = mid
        node.tokens = node.tokens[k:]
        node.kv = node.kv.narrow(self.seq_dim, k, node.kv.shape[self.seq_dim] - k).clone()
        node.parent = mid
        mid.children[node.tokens[0]] = node
        return mid

    def evict(self) -> None:
        """Drop least-recently-used leaves until the cache fits its budget."""
        while self.total_tokens > self.max_tokens:
            leaves = [n for n in self._nodes() if not n.children and n is not self.root and not n.pins]
            if not leaves:
                break
            leaves.sort(key=lambda n: n.last_used)
            for leaf in leaves:
                if self.total_tokens <= self.max_tokens:
                    break
                del leaf.parent.children[leaf.tokens[0]]
                self.total_tokens -= len(leaf.tokens)

    def clear(self) -> None:
        self.root = _Node((), None, None)
        self.total_tokens = 0

    def _nodes(self):
        stack = [self.root]
        while stack:
            n = stack.pop()
            yield n
            stack.extend(n.children.values())
