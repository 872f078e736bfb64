"""The output file of a rollout job: JSON Lines, crash-safe and resumable.

Line 1 is a header naming the format and the job ({"format": "temper-rollouts", "version": 1,
"job": {...}}); every later line is one prompt's result, carrying its id. How it stays correct
when the job is killed at any point (kill -9 included):

- the header is written to a temporary file and renamed into place, so the output either does
  not exist or starts with a whole header;
- each result line is one write() of the complete line and its newline, then fsync, so a kill
  can only leave a last line without its newline: a partial line, which is cut off on resume
  (that prompt is generated again);
- on resume every complete line must be a result of this job (a prompt id of the prompts file,
  never twice); the prompts already present are skipped, so each appears exactly once.

A file that is not ours (another format, another job, a corrupt line in the middle) is refused
with a message and never written to.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Set
from pathlib import Path
from typing import Any

FORMAT = "temper-rollouts"
VERSION = 1


class OutputFileError(ValueError):
    """An output file that this job must not touch; the message says why and what to do."""


def header(job: Mapping[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "job": dict(job)}


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """The first key path where two JSON values differ ("config.n: 8 vs 4"), None if equal."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in sorted(set(a) | set(b), key=str):
            d = first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
            if d:
                return d
        return None
    return None if a == b else f"{path or 'value'}: {json.dumps(b)} in the file, {json.dumps(a)} now"


def _refuse(path: Path, why: str) -> OutputFileError:
    return OutputFileError(
        f"{path}: {why}; refusing to write to it (pick another --out, or move the file away to start over)"
    )


def _check_header(path: Path, line: bytes, job: Mapping[str, Any]) -> None:
    try:
        head = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        head = None
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        raise _refuse(path, "exists and is not a temper rollouts file")
    if head.get("version") != VERSION:
        raise _refuse(path, f"is a version {head.get('version')} rollouts file; this temper writes version {VERSION}")
    diff = first_difference(dict(job), head.get("job"))
    if diff:
        raise _refuse(path, f"was written by another job ({diff})")


def scan(path: Path, job: Mapping[str, Any], ids: Set[str], key_of) -> tuple[set[str], int]:
    """Check an existing output file against this job. Returns the id keys already done and the
    byte length of its complete lines (a partial last line past it is a crash's leftover)."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # bytes up to and including the last newline
    lines = data[:end].split(b"\n")[:-1]
    if not lines:
        raise _refuse(path, "exists and is not a temper rollouts file (no complete first line)")
    _check_header(path, lines[0], job)
    done: dict[str, int] = {}
    for n, line in enumerate(lines[1:], start=2):
        try:
            obj = json.loads(line)
            key = key_of(obj["id"])
            if not isinstance(obj["rollouts"], list):
                raise TypeError
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            raise _refuse(path, f"line {n} is corrupt (not a rollouts result)") from None
        if key not in ids:
            raise _refuse(path, f"line {n} holds id {obj['id']!r}, which is not in the prompts file")
        if key in done:
            raise _refuse(path, f"line {n} repeats id {obj['id']!r} (first on line {done[key]})")
        done[key] = n
    return set(done), end


class RolloutWriter:
    """Appends result lines, each in one write() with its newline, then fsync."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND)

    def write(self, obj: Mapping[str, Any]) -> None:
        data = (json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:  # a regular file takes it in one write(); loop only for safety
            view = view[os.write(self.fd, view) :]
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_output(
    path: str | os.PathLike, job: Mapping[str, Any], ids: Set[str], key_of
) -> tuple[RolloutWriter, set[str]]:
    """The writer for this job's output file and the id keys already in it: a new file gets its
    header; an existing one is checked (scan) and a crash's partial last line is cut off."""
    path = Path(path)
    job = json.loads(json.dumps(dict(job)))  # compared as the file holds it (1 == 1.0, lists)
    if path.is_dir():
        raise _refuse(path, "is a directory")
    if path.exists() and path.stat().st_size > 0:
        done, end = scan(path, job, ids, key_of)
        if end < path.stat().st_size:
            os.truncate(path, end)
        return RolloutWriter(path), done
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write((json.dumps(header(job), ensure_ascii=False) + "\n").encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return RolloutWriter(path), set()
