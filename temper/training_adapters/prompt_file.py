"""The prompts file of a rollout job: JSON Lines, one prompt per line, read and validated whole
before anything is generated.

Each line is an object with `prompt` (text or a list of token ids) or `messages` (chat
messages), and optionally `id` (a string or an integer; default: the line number, counting from
1). Other fields are carried into that prompt's output line under "extra". Blank lines are
skipped (they still count for line numbers). Any bad line is a PromptFileError naming the file
and the line.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temper.training_adapters.prompt_input import PromptError, PromptInput, as_prompt

PromptId = str | int


class PromptFileError(ValueError):
    """A prompts file that cannot be used; the message names the file and the line."""


@dataclass(frozen=True, slots=True)
class PromptRecord:
    id: PromptId
    line: int  # 1-based
    prompt: PromptInput
    extra: dict[str, Any] = field(default_factory=dict)


def id_key(value: PromptId) -> str:
    """A hashable key telling 3 and "3" apart, as JSON does."""
    return json.dumps(value)


def _record(obj: Any, line: int, where: str) -> PromptRecord:
    if not isinstance(obj, dict):
        raise PromptFileError(f"{where}: must be a JSON object with `prompt` or `messages`")
    if ("prompt" in obj) == ("messages" in obj):
        raise PromptFileError(f"{where}: needs exactly one of `prompt` (text or token ids) or `messages`")
    pid = obj.get("id", line)
    if isinstance(pid, bool) or not isinstance(pid, str | int) or pid == "":
        raise PromptFileError(f"{where}: id: must be a non-empty string or an integer, got {pid!r}")
    key = "prompt" if "prompt" in obj else "messages"
    try:
        prompt = as_prompt(obj[key], f"{where}: {key}")
    except PromptError as exc:
        raise PromptFileError(str(exc)) from None
    if key == "prompt" and prompt.messages is not None:
        raise PromptFileError(f"{where}: prompt: chat messages go in `messages`")
    if key == "messages" and prompt.messages is None:
        raise PromptFileError(f"{where}: messages: must be a list of chat messages")
    extra = {k: v for k, v in obj.items() if k not in ("id", "prompt", "messages")}
    return PromptRecord(pid, line, prompt, extra)


def read_prompts(path: str | os.PathLike) -> tuple[list[PromptRecord], str]:
    """Every prompt of the file, in order, and the file's sha256 (a job's identity)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise PromptFileError(f"{path}: cannot read the prompts file: {exc.strerror or exc}") from None
    records: list[PromptRecord] = []
    seen: dict[str, int] = {}
    for line, chunk in enumerate(raw.split(b"\n"), start=1):
        if not chunk.strip():
            continue
        where = f"{path} line {line}"
        try:
            obj = json.loads(chunk.decode("utf-8"))
        except UnicodeDecodeError:
            raise PromptFileError(f"{where}: not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise PromptFileError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        rec = _record(obj, line, where)
        key = id_key(rec.id)
        if key in seen:
            raise PromptFileError(f"{where}: id {rec.id!r} is already used on line {seen[key]}")
        seen[key] = line
        records.append(rec)
    if not records:
        raise PromptFileError(f"{path}: no prompts in the file")
    return records, hashlib.sha256(raw).hexdigest()
