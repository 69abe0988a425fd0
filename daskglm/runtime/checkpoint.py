"""Solver checkpoints: the state after every iteration, written atomically; resumed on request.

A checkpoint is a small JSON file: a fingerprint of the model (response, covariates, family,
solver, panel dims and sizes, and the data's summary sums from the setup pass), the iteration
and the parameter vector. ``fit(..., checkpoint=path)`` writes it after every iteration (to a
temporary file in the same folder, then ``os.replace``, so a crash never leaves half a file)
and, when the file exists, resumes from it, refusing a checkpoint of a different model.

Newton-Raphson's whole state is its parameter vector, so a resumed Newton fit retraces the
undisturbed one exactly. The gradient solvers restart their internal state (line-search step,
Adam's moments, L-BFGS's memory, the preconditioner) at the saved parameters: they reach the
same optimum to within their tolerance, along a slightly different path.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass

import numpy as np

__all__ = ["Checkpoint", "CheckpointMismatch", "model_fingerprint"]


class CheckpointMismatch(ValueError):
    """The checkpoint file belongs to another model or other data."""


def model_fingerprint(description: dict) -> str:
    """A stable hash of a JSON-able description of the model and its data."""
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Checkpoint:
    """Reads and writes the checkpoint at ``path`` for the model with ``fingerprint``."""

    path: str
    fingerprint: str
    description: dict

    def load(self) -> dict | None:
        """The saved state (``iteration``, ``params``), or None when there is no file yet."""
        if not os.path.exists(self.path):
            return None
        try:
            with open(self.path) as f:
                state = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointMismatch(
                f"checkpoint {self.path!r} cannot be read ({err}); delete it to start afresh"
            ) from err
        if state.get("fingerprint") != self.fingerprint:
            theirs = state.get("model", {})
            diff = sorted(
                k for k in set(theirs) | set(self.description) if theirs.get(k) != self.description.get(k)
            )
            raise CheckpointMismatch(
                f"checkpoint {self.path!r} belongs to a different model or data (differs in: "
                f"{', '.join(diff) or 'the data'}); delete it or pass another checkpoint= path"
            )
        state["params"] = np.asarray(state["params"], dtype=np.float64)
        return state

    def save(self, iteration: int, params: np.ndarray, ll: float) -> None:
        """Write the state atomically."""
        state = {
            "fingerprint": self.fingerprint,
            "model": self.description,
            "iteration": int(iteration),
            "ll": float(ll),
            "params": [float(v) for v in np.asarray(params)],
        }
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".daskglm-ckpt-", dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
