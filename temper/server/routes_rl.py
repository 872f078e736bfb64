"""The routes RL trainers call, as `vllm serve` answers them (TRL's VLLMClient is the reference
client): /get_world_size, /reset_prefix_cache, /pause, /resume, /is_paused, /server_info,
/weight_info, vLLM's weight-transfer routes, and temper's /update_weights_from_disk.

Weight updates never land in the middle of a response (weights.py); a frozen model (--frozen)
refuses them with a 409. The transformers engine has no NCCL weight-transfer engine: its
transfer routes answer 400 naming /update_weights_from_disk, which works on every engine.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Body, Request

from temper.server.errors import APIError, bad_request
from temper.server.protocol import UpdateWeightsRequest
from temper.server.state import ServerState

router = APIRouter()

TRANSFER_ROUTES = ("/init_weight_transfer_engine", "/start_weight_update", "/update_weights", "/finish_weight_update")


def _state(request: Request) -> ServerState:
    return request.app.state.temper


@router.get("/get_world_size")
async def get_world_size(request: Request, include_dp: bool = True) -> dict:
    """Processes serving the default model (vLLM's TP × PP × DP); 1 for an in-process engine."""
    engine = next(iter(_state(request).engines.values()))
    return {"world_size": int(getattr(engine, "world_size", 1))}


@router.post("/reset_prefix_cache")
async def reset_prefix_cache(request: Request) -> dict:
    """Drop every engine's cached prefixes (after out-of-band weight changes)."""
    results = [await engine.reset_prefix_cache() for engine in _state(request).engines.values()]
    return {"success": all(results)}


@router.post("/pause")
async def pause(request: Request, mode: Literal["abort", "wait", "keep"] = "abort", clear_cache: bool = True) -> dict:
    """Hold new requests until /resume. abort: cancel the running ones (they answer 503);
    wait: return once they have finished; keep: let them run on. clear_cache: drop cached
    prefixes (not with keep, as vLLM)."""
    state = _state(request)
    state.pause.pause()
    if mode == "abort":
        state.runner.abort_all()
    if mode in ("abort", "wait"):
        await state.runner.drain()
    if clear_cache and mode != "keep":
        for engine in state.engines.values():
            await engine.reset_prefix_cache()
    return {"status": "paused"}


@router.post("/resume")
async def resume(request: Request) -> dict:
    _state(request).pause.resume()
    return {"status": "resumed"}


@router.get("/is_paused")
async def is_paused(request: Request) -> dict:
    return {"is_paused": _state(request).pause.paused}


@router.get("/server_info")
async def server_info(request: Request, config_format: Literal["text", "json"] = "text") -> dict:
    """The parts of vLLM's /server_info that RL clients read (TRL: logprobs_mode, whether a
    weight-transfer engine exists)."""
    state = _state(request)
    name, engine = state.model(None)
    model_config = {
        "model": name,
        "served_model_name": list(state.engines),
        "logprobs_mode": state.config.logprobs_mode,
        "max_logprobs": state.config.max_logprobs,
        "max_model_len": engine.max_context,
        "dtype": str(getattr(engine, "dtype", "unknown")),
    }
    config: dict[str, Any] = {
        "model_config": model_config,
        "weight_transfer_config": None,
        "engine": type(engine).__name__,
    }
    return {"vllm_config": config if config_format == "json" else str(config)}


@router.get("/weight_info")
async def weight_info(request: Request, model: str | None = None) -> dict:
    name, engine = _state(request).model(model)
    return {"model": name, "weight_version": engine.weight_version}


@router.post("/update_weights_from_disk")
async def update_weights_from_disk(body: UpdateWeightsRequest, request: Request) -> dict:
    """Swap in a checkpoint's weights once the requests running on the model have finished
    (new ones wait); the prefix cache is cleared and the model's weight_version goes up. A bad
    checkpoint is a 400 naming the first mismatch, and the served weights stay as they were."""
    state = _state(request)
    name, engine = state.model(body.model)
    gate = state.gates[name]
    if gate.frozen:
        raise APIError(409, f"model: {name!r} is frozen (--frozen {name}); its weights cannot change", "model")
    async with gate.exclusive():
        await engine.load_weights(body.path)
    return {"model": name, "weight_version": engine.weight_version}


async def _transfer(request: Request, info: dict[str, Any] | None = None) -> dict:
    state = _state(request)
    name, engine = state.model(None)
    transfer = getattr(engine, "weight_transfer", None)
    if transfer is None:
        raise bad_request(
            f"{request.url.path}: the {type(engine).__name__} engine has no NCCL weight-transfer engine "
            "(vLLM's, on GPUs); send checkpoints to POST /update_weights_from_disk instead",
            None,
        )
    if state.gates[name].frozen:
        raise APIError(409, f"model: {name!r} is frozen (--frozen {name}); its weights cannot change", "model")
    return await transfer(request.url.path.strip("/"), info or {})


for _path in TRANSFER_ROUTES:

    async def _route(request: Request, info: dict[str, Any] | None = Body(default=None)) -> dict:
        return await _transfer(request, info)

    router.add_api_route(_path, _route, methods=["POST"], name=_path.strip("/"))
