"""HTTPTransport: rollouts, scores and weight updates from a running server.

Against temper every strategy works (the `decoding` object rides in the body); against any
vLLM-compatible server (`vllm serve`) plain sampling does. Wire shapes (vLLM's):

  prompts (text or token ids)  POST /v1/completions       {prompt, n, ..., logprobs: 0, return_token_ids}
                               → choices[i].prompt_token_ids, .token_ids, .logprobs.token_logprobs
  chat messages                POST /v1/chat/completions  {messages, ..., logprobs: true, return_token_ids}
                               → prompt_token_ids (top level), choices[i].token_ids, .logprobs.content[*]
  scores (temper)              POST /v1/logprobs          {prompt: [[ids]], start, top_logprobs}
  weights (temper)             POST /update_weights_from_disk {path, model} → {weight_version}
  vocabulary                   POST /tokenize             {prompt} and {messages}

Log-probs: a server returns either raw log-probs or the sampled distribution's, as it was
started (`--logprobs-mode`, read once from /server_info). Rollout.logprobs must be the sampled
distribution's, so they are kept when the server runs `processed_logprobs`, or when raw and
sampled coincide (temperature 1, no top-k/top-p), and are None otherwise; strategies that do not
sample token by token (power) are not asked for any (a processed-mode server refuses them).

`weight_version` is read from the body (temper) or the x-weight-version header; None when the
server reports neither. Requests run side by side, at most `max_concurrency` at a time; every
non-2xx answer becomes a ServerError carrying the server's own message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import numpy as np

from temper.decoding.engine import Scored
from temper.decoding.strategies.registry import parse_decoding
from temper.training_adapters.prompt_input import PromptInput
from temper.training_adapters.rollout import Rollout, RolloutConfig, RolloutGroup, float_array
from temper.training_adapters.transport import gather_all
from temper.training_adapters.vocabulary import PROBE_MESSAGES, PROBE_TEXT, Vocabulary

SCORE_BATCH = 64  # sequences per /v1/logprobs request


class ServerError(RuntimeError):
    """A server answered with an error, answered something unreadable, or could not be reached."""

    def __init__(self, message: str, status: int | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.param = param


def error_message(r: httpx.Response) -> tuple[str, str | None]:
    """The server's own error message (OpenAI's, vLLM's or FastAPI's shape) and field."""
    try:
        body = r.json()
    except ValueError:
        return r.text[:500] or r.reason_phrase, None
    if isinstance(body, Mapping):
        err = body.get("error")
        if isinstance(err, Mapping):
            return str(err.get("message", err)), err.get("param")
        if "message" in body:
            return str(body["message"]), body.get("param")
        if "detail" in body:
            return str(body["detail"]), None
    return str(body)[:500], None


def base_url(url: str) -> str:
    """The server root: "http://host:8000/v1/" and "http://host:8000" are the same server."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def logprobs_plan(config: RolloutConfig) -> tuple[bool, bool]:
    """(whether the strategy has sampled log-probs to ask for, whether raw log-probs equal them
    under these settings), judged with the local strategy registry; a strategy only the server
    knows is asked, and trusted only in processed mode."""
    try:
        strategy, params = parse_decoding(config.decoding)
        settings = strategy.settings(config.settings(), params)
    except ValueError:
        return True, False
    if not strategy.sampled_logprobs(params):
        return False, False
    return True, settings.temperature == 1.0 and settings.top_p == 1.0 and settings.top_k_or_off == 0


def weight_version(data: Mapping[str, Any], headers: Mapping[str, str]) -> int | None:
    if data.get("weight_version") is not None:
        return int(data["weight_version"])
    header = headers.get("x-weight-version")
    return int(header) if header is not None else None


class HTTPTransport:
    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 600.0, max_concurrency: int = 64):
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency: must be >= 1, got {max_concurrency}")
        self.url = base_url(url)
        self.description = self.url
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
        )
        self._default: str | None = None
        self._mode: str | None = None

    async def request(self, method: str, path: str, body: Any = None) -> tuple[Any, httpx.Headers]:
        try:
            r = await self.client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise ServerError(f"{self.url}{path}: {type(exc).__name__}: {exc}") from None
        if r.status_code >= 400:
            message, param = error_message(r)
            raise ServerError(f"{self.url}{path}: HTTP {r.status_code}: {message}", r.status_code, param)
        try:
            return r.json(), r.headers
        except ValueError:
            raise ServerError(f"{self.url}{path}: the answer is not JSON: {r.text[:200]!r}", r.status_code) from None

    async def default_model(self) -> str:
        if self._default is None:
            data, _ = await self.request("GET", "/v1/models")
            try:
                self._default = str(data["data"][0]["id"])
            except (KeyError, IndexError, TypeError):
                raise ServerError(f"{self.url}/v1/models: no model listed") from None
        return self._default

    async def model_or_default(self, model: str | None) -> str:
        return model if model is not None else await self.default_model()

    async def logprobs_mode(self) -> str:
        """The server's --logprobs-mode; vLLM's default (raw) when it does not say."""
        if self._mode is None:
            try:
                data, _ = await self.request("GET", "/server_info?config_format=json")
                mode = data["vllm_config"]["model_config"]["logprobs_mode"]
            except (ServerError, KeyError, TypeError):
                mode = "raw_logprobs"
            self._mode = str(mode)
        return self._mode

    async def check(self, prompts: Sequence[PromptInput], config: RolloutConfig) -> None:
        return None  # the server checks each request (a 400 naming the field)

    async def generate(self, prompts: Sequence[PromptInput], config: RolloutConfig) -> list[RolloutGroup]:
        model = await self.model_or_default(config.model)
        has, raw_is_sampled = logprobs_plan(config)
        want = has and (raw_is_sampled or await self.logprobs_mode() == "processed_logprobs")
        return await gather_all(self.generate_one(p, config, model, want) for p in prompts)

    def body(self, p: PromptInput, config: RolloutConfig, model: str, logprobs: bool) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": model, **config.sampling_fields(), "return_token_ids": True}
        if config.decoding is not None:
            body["decoding"] = config.decoding
        if p.messages is not None:
            chat = {"messages": [dict(m) for m in p.messages]} | ({"logprobs": True} if logprobs else {})
            return "/v1/chat/completions", {**body, **chat}
        prompt = p.text if p.text is not None else list(p.token_ids or ())
        return "/v1/completions", {**body, "prompt": prompt} | ({"logprobs": 0} if logprobs else {})

    async def generate_one(self, p: PromptInput, config: RolloutConfig, model: str, logprobs: bool) -> RolloutGroup:
        path, body = self.body(p, config, model, logprobs)
        data, headers = await self.request("POST", path, body)
        if config.decoding is not None and "decoding" not in data:
            raise ServerError(
                f"{self.url}{path}: the server ignored the `decoding` object (not a temper server?); "
                "only plain sampling works against it"
            )
        try:
            return self.group(data, headers, chat=p.messages is not None)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ServerError(f"{self.url}{path}: unexpected answer ({type(exc).__name__}: {exc})") from None

    def group(self, data: Mapping[str, Any], headers: Mapping[str, str], *, chat: bool) -> RolloutGroup:
        choices = sorted(data["choices"], key=lambda c: c["index"])
        prompt_ids = data.get("prompt_token_ids") if chat else choices[0].get("prompt_token_ids")
        if prompt_ids is None or any(c.get("token_ids") is None for c in choices):
            raise ServerError(
                f"{self.url}: the answer has no token ids: the server does not support vLLM's "
                "`return_token_ids` (temper and vLLM >= 0.10.2 do)"
            )
        rollouts = [self.rollout(c, chat) for c in choices]
        meta = data.get("decoding") or {}
        return RolloutGroup(list(prompt_ids), rollouts, str(data["model"]), weight_version(data, headers), dict(meta))

    def rollout(self, c: Mapping[str, Any], chat: bool) -> Rollout:
        ids = [int(t) for t in c["token_ids"]]
        lp = c.get("logprobs")
        if chat:
            text = (c.get("message") or {}).get("content") or ""
            values = [e["logprob"] for e in lp["content"]] if lp else None
        else:
            text = c.get("text") or ""
            values = lp["token_logprobs"] if lp else None
        if values is not None and len(values) != len(ids):
            raise ValueError(f"choice {c['index']}: {len(values)} logprobs for {len(ids)} token ids")
        return Rollout(ids, text, c.get("finish_reason") or "stop", float_array(values), dict(c.get("decoding") or {}))

    async def score(
        self,
        sequences: Sequence[Sequence[int]],
        start: int | Sequence[int] = 1,
        top_k: int = 0,
        model: str | None = None,
    ) -> list[Scored]:
        starts = [start] * len(sequences) if isinstance(start, int) else list(start)
        if len(starts) != len(sequences):
            raise ValueError("start: need one start per sequence")
        model = await self.model_or_default(model)
        # one request per run of sequences that share a start (the route takes one start)
        batches: list[list[int]] = []
        for i, s in enumerate(starts):
            if batches and starts[batches[-1][0]] == s and len(batches[-1]) < SCORE_BATCH:
                batches[-1].append(i)
            else:
                batches.append([i])
        parts = await gather_all(
            self.score_batch([sequences[i] for i in b], starts[b[0]], top_k, model) for b in batches
        )
        return [s for part in parts for s in part]

    async def score_batch(self, seqs: Sequence[Sequence[int]], start: int, top_k: int, model: str) -> list[Scored]:
        body = {"model": model, "prompt": [list(s) for s in seqs], "start": start, "top_logprobs": top_k}
        data, _ = await self.request("POST", "/v1/logprobs", body)
        out = []
        for entry in sorted(data["data"], key=lambda e: e["index"]):
            logp = float_array(entry["logprobs"][start:])
            top_ids = top_lps = None
            if top_k:
                rows = entry["top_logprobs"][start:]
                top_ids = np.asarray([[a["token_id"] for a in row] for row in rows], dtype=np.int64).reshape(-1, top_k)
                top_lps = np.asarray([[a["logprob"] for a in row] for row in rows], dtype=np.float32).reshape(-1, top_k)
            out.append(Scored(logp, top_ids, top_lps))
        return out

    async def vocabulary(self, model: str | None = None) -> Vocabulary:
        model = await self.model_or_default(model)
        text, _ = await self.request(
            "POST", "/tokenize", {"model": model, "prompt": PROBE_TEXT, "add_special_tokens": False}
        )
        chat, _ = await self.request(
            "POST", "/tokenize", {"model": model, "messages": list(PROBE_MESSAGES), "add_generation_prompt": True}
        )
        return Vocabulary(model, tuple(text["tokens"]), tuple(chat["tokens"]))

    async def update_weights(self, path: str, model: str | None = None) -> int:
        model = await self.model_or_default(model)
        data, _ = await self.request("POST", "/update_weights_from_disk", {"path": str(path), "model": model})
        return int(data["weight_version"])

    async def close(self) -> None:
        await self.client.aclose()
