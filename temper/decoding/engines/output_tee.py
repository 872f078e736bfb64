"""OutputTee: keep the last lines that child processes print, while still printing them.

vLLM runs its engine core and workers in child processes; when one of them fails (a model it
cannot run, a worker crash), the parent only learns "Engine core initialization failed. See root
cause above" while the reason sits in the children's log. While the tee is installed, this
process's stdout/stderr file descriptors point into pipes; children started meanwhile inherit
them for good, and a reader thread copies everything on to the original destinations and keeps
the last lines, from which `reason()` picks the root-cause exception line. `restore()` gives
this process its own descriptors back (the children keep the pipes).
"""

from __future__ import annotations

import collections
import os
import re
import signal
import sys
import threading

# vLLM's log prefix: "(Worker pid=12) ERROR 12-04 16:40:46 [file.py:1063] "
_PREFIX = re.compile(r"^\([^)]*\)\s+[A-Z]+\s+[\d-]+\s+[\d:.]+\s+\[[^\]]*\]\s?")
_EXC = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit)): (.+)$")
_GENERIC = ("root cause", "stack trace", "EngineCore encountered an issue", "initialization failed")
_WRAPPERS = ("cancelled",)  # whole messages that only say a worker went away
_DIED = re.compile(r"(Worker proc \S+) died unexpectedly \(exit code: -(\d+)\)")


class OutputTee:
    def __init__(self, keep_lines: int = 400):
        self.lines: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self._saved: dict[int, int] = {}
        self._lock = threading.Lock()

    def install(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd in (1, 2):
            r, w = os.pipe()
            self._saved[fd] = os.dup(fd)
            os.dup2(w, fd)
            os.close(w)
            threading.Thread(target=self._pump, args=(r, self._saved[fd]), daemon=True,
                             name=f"output-tee-{fd}").start()

    def restore(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)  # the saved copy stays open: the pump still writes to it
        self._saved = {}

    def _pump(self, r: int, out: int) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(r, 65536)
            except OSError:
                break
            if not chunk:
                break  # every writer (this process and its children) has closed the pipe
            try:
                os.write(out, chunk)
            except OSError:
                pass
            pending += chunk
            *done, pending = pending.split(b"\n")
            with self._lock:
                self.lines.extend(line.decode("utf-8", "replace") for line in done)
        os.close(r)

    def reason(self) -> str | None:
        """The most recent specific exception line ('RuntimeError: ...'), skipping the generic
        wrappers that only point at it; None when the log shows none."""
        with self._lock:
            lines = list(self.lines)
        for line in reversed(lines):
            text = _PREFIX.sub("", line).strip()
            died = _DIED.search(text)
            if died:  # killed by a signal, so no exception line of its own: name the signal
                return f"vLLM {died.group(1)} was killed by {_signal_name(int(died.group(2)))}"
            m = _EXC.match(text)
            if m and m.group(2).strip() not in _WRAPPERS and not any(g in m.group(2) for g in _GENERIC):
                return f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2).strip()}"
        return None


def _signal_name(number: int) -> str:
    """'SIGILL' for 4; 'signal 99' for a number the platform does not name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
