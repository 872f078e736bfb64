"""EngineStats from vLLM's own counters: a stat logger vLLM calls once per engine step.

Read per step (vLLM 0.32/0.33 `SchedulerStats` / `IterationStats`, which vLLM marks as not a
stable interface; a missing field reads as 0):
  forward_passes     += 1 per step that produced outputs
  forward_tokens     += prompt tokens computed (not cache hits) + tokens generated
  generated_tokens   += tokens generated
  prefix_lookups     += requests that looked up the prefix cache
  prefix_query_tokens / prefix_hit_tokens += tokens looked up / found (the prefix cache's stats)
This module imports vLLM: only the vLLM engine loads it.
"""

from __future__ import annotations

from vllm.v1.metrics.loggers import StatLoggerBase

from temper.decoding.engine import EngineStats


class EngineStatsLogger(StatLoggerBase):
    def __init__(self, vllm_config, engine_index: int = 0, stats: EngineStats | None = None):
        self.stats = stats if stats is not None else EngineStats()

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
        s = self.stats
        if iteration_stats is not None:
            generated = getattr(iteration_stats, "num_generation_tokens", 0)
            prompt = getattr(getattr(iteration_stats, "prompt_token_stats", None), "computed", 0)
            if generated or prompt:
                s.forward_passes += 1
            s.forward_tokens += prompt + generated
            s.generated_tokens += generated
        pcs = getattr(scheduler_stats, "prefix_cache_stats", None)
        if pcs is not None:
            s.prefix_lookups += pcs.requests
            s.prefix_query_tokens += pcs.queries
            s.prefix_hit_tokens += pcs.hits

    def log_engine_initialized(self):
        pass


def stats_logger_factory(stats: EngineStats):
    """The factory vLLM's StatLoggerManager calls (vllm_config, engine_index) → logger."""

    def make(vllm_config, engine_index: int = 0) -> EngineStatsLogger:
        return EngineStatsLogger(vllm_config, engine_index, stats)

    return make
