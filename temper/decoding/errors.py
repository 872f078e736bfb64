"""The errors a decoding request can raise, below every layer that raises them.

Strategies, prompt templates and engines all raise these; the server maps each to one HTTP
status (errors.py there). They live here, beside the Engine protocol, so that nothing has to
import upward to raise or catch them.

  ParamError          a bad request field (HTTP 400 naming it)
  ContextLengthError  a prompt plus its new tokens do not fit the model (HTTP 400, `prompt`)
  EngineDeadError     the engine can no longer serve (HTTP 503; /health reports it)
"""

from __future__ import annotations

from pydantic import ValidationError


class ParamError(ValueError):
    """A bad request field. `param` names it (dotted, e.g. "decoding.alpha")."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class ContextLengthError(ValueError):
    """A prefix plus its new tokens do not fit the model's context."""


class EngineDeadError(RuntimeError):
    """The engine failed in a way it cannot recover from; every later call fails too."""


def param_error_from(exc: ValidationError, prefix: str = "") -> ParamError:
    """The first pydantic error as a ParamError naming its field (under `prefix`)."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
    param = f"{prefix}.{loc}" if prefix and loc else (prefix or loc or None)
    msg = err.get("msg", "invalid value")
    return ParamError(f"{param}: {msg}" if param else msg, param)
