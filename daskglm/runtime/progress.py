"""Per-iteration progress (a tqdm line) and logging, fed by the solvers' diagnostics rows."""

from __future__ import annotations

import logging
import sys

__all__ = ["Progress"]

log = logging.getLogger("daskglm")


class Progress:
    """Shows iteration, LL, step, gradient norm, elapsed time and passes as a fit runs.

    Parameters
    ----------
    solver : str
        Shown as the bar's label.
    max_iter : int
        The bar's total.
    enabled : bool or None
        ``None``: on when stderr is a terminal. ``False`` silences the display (rows are still
        logged at DEBUG level on the ``"daskglm"`` logger).
    """

    def __init__(self, solver: str, max_iter: int, enabled: bool | None = None):
        if enabled is None:
            enabled = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=max_iter, desc=f"daskglm {solver}", unit="it", leave=False, file=sys.stderr)

    def update(self, row: dict) -> None:
        log.debug(
            "iteration %d: ll=%.10g step=%.3g grad_norm=%.3g passes=%d %.2fs",
            row["iteration"],
            row["ll"],
            row["step"],
            row["grad_norm"],
            row["passes"],
            row["seconds"],
        )
        if self.bar is not None:
            self.bar.n = row["iteration"]
            self.bar.set_postfix(
                ll=f"{row['ll']:.8g}",
                step=f"{row['step']:.3g}",
                grad=f"{row['grad_norm']:.2e}",
                passes=row["passes"],
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
