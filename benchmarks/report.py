"""Tables and plot of a ``benchmarks/peers.py`` run: ``RESULTS.md`` and ``peers.png``.

Kept apart from the runner so the report can be rebuilt from ``results.json`` alone:

    python benchmarks/report.py benchmarks/results.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

__all__ = ["write_results", "write_plot", "targets"]


def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return ""
    return format(v, spec)


def _ok(r: dict) -> bool:
    return r.get("status") == "ok"


def _reference(rows: list[dict], r: dict) -> dict | None:
    """The ``daskglm`` (threads) row of the same scenario and size, if it ran."""
    for q in rows:
        if q["scenario"] == r["scenario"] and q["cells"] == r["cells"] and q["tool"] == "daskglm" and _ok(q):
            return q
    return None


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets, each with the measured figure and whether it was met."""
    out = []
    floors = [r for r in rows if _ok(r) and r.get("floor")]
    for r in floors:
        ratio = r["per_iteration"] / r["floor"]
        out.append(
            f"- per Newton iteration within 2x of the floor — scenario {r['scenario']}, "
            f"{r['cells']:.2g} cells, {r['tool']}: {ratio:.1f}x ({'met' if ratio <= 2 else 'missed'})"
        )
    for r in rows:
        peer = r["tool"] in ("glum", "statsmodels")
        if r["scenario"] not in (1, 2, 3) or r["cells"] < 2e6 or not _ok(r) or not peer:
            continue
        ref = _reference(rows, r)
        if ref is None:
            continue
        speed = r["fit_seconds"] / ref["fit_seconds"]
        if r["tool"] == "glum":
            mem = ref["peak_gb"] / r["peak_gb"]
            mem_met = "met" if mem <= 1 / 3 else "missed"
            out.append(
                f"- faster than glum — scenario {r['scenario']}, {r['cells']:.2g} cells: "
                f"glum takes {speed:.2f}x daskglm's time ({'met' if speed > 1 else 'missed'}); "
                f"daskglm's peak memory is {mem:.2f} of glum's, target <= 0.33 ({mem_met})"
            )
        else:
            out.append(
                f"- >= 10x faster than statsmodels — scenario {r['scenario']}, {r['cells']:.2g} cells: "
                f"{speed:.1f}x ({'met' if speed >= 10 else 'missed'})"
            )
    scale = {r["tool"]: r for r in rows if r["scenario"] == 5 and _ok(r)}
    if "daskglm-cluster:1" in scale and "daskglm-cluster:2" in scale:
        s = scale["daskglm-cluster:1"]["per_iteration"] / scale["daskglm-cluster:2"]["per_iteration"]
        met = "met" if s >= 1.7 else "missed"
        out.append(f"- 2 workers >= 1.7x faster than 1 (per iteration): {s:.2f}x ({met})")
    return out


def write_results(rows: list[dict], meta: dict, path: Path) -> None:
    lines = [
        "# daskglm beside its peers",
        "",
        f"Command: `{meta['command']}` ({meta['minutes']:.0f} minutes). Machine: {meta['machine']}; "
        f"Python {meta['python']}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".",
        "",
        "Seconds are the fit alone (imports and data loading excluded for every tool). Peak GB is the",
        "largest summed resident memory of the tool's process and its children (daskglm's workers),",
        "sampled every 50 ms, loaded data included. `daskglm` is the default `dg.fit` (threaded",
        "scheduler, data in memory as dask arrays); `daskglm-cluster` is a LocalCluster of worker",
        "processes reading the zarr store (persisted in worker memory when it fits). Peers get the same",
        "data in long format (one float64 row per cell). Max |diff| is the largest absolute difference",
        "of any coefficient from `daskglm`'s (alpha included for NB2). Ratios are tool ÷ `daskglm`.",
        "",
        "| scenario | cells | tool | seconds | peak GB | iterations | max abs diff | time ratio "
        "| memory ratio | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = _reference(rows, r)
        if _ok(r):
            t_ratio = r["fit_seconds"] / ref["fit_seconds"] if ref else None
            m_ratio = r["peak_gb"] / ref["peak_gb"] if ref else None
            note = r.get("setting", "")
            lines.append(
                f"| {r['scenario']} | {r['cells']:.3g} | {r['tool']} | {r['fit_seconds']:.2f} "
                f"| {r['peak_gb']:.2f} | {_fmt(r.get('iterations'), 'd')} "
                f"| {_fmt(r.get('max_abs_diff'), '.1e')} "
                f"| {_fmt(t_ratio, '.2f')} | {_fmt(m_ratio, '.2f')} | {note} |"
            )
        else:
            lines.append(f"| {r['scenario']} | {r['cells']:.3g} | {r['tool']} | | | | | | | {r['status']} |")
    lines += [
        "",
        "## daskglm per Newton iteration against the floor",
        "",
        "The floor is one plain `dask.compute` of the sum of every full-grid array (y and the",
        "full-grid covariates), on the same scheduler and from the same place as the fit (memory,",
        "worker memory or the zarr store). Per iteration is the median time between iterations.",
        "",
        "| scenario | cells | tool | setting | s / iteration | floor s | ratio | passes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if _ok(r) and r.get("floor"):
            lines.append(
                f"| {r['scenario']} | {r['cells']:.3g} | {r['tool']} | {r['setting']} "
                f"| {r['per_iteration']:.3f} | {r['floor']:.3f} "
                f"| {r['per_iteration'] / r['floor']:.1f} | {r['passes']} |"
            )
    plot = "![time and memory against panel size](peers.png)"
    lines += ["", "## Targets", "", *targets(rows), "", plot, ""]
    path.write_text("\n".join(lines))


def write_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    s1 = [r for r in rows if r["scenario"] == 1 and _ok(r)]
    for tool in dict.fromkeys(r["tool"] for r in s1):
        pts = sorted((r["cells"], r["fit_seconds"], r["peak_gb"]) for r in s1 if r["tool"] == tool)
        cells, secs, mem = zip(*pts, strict=True)
        style = "-o" if tool.startswith("daskglm") else "--s"
        axes[0].plot(cells, secs, style, label=tool)
        axes[1].plot(cells, mem, style, label=tool)
    for ax, what in zip(axes, ("fit seconds", "peak memory (GB)"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("cells in the panel")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title("Scenario 1: 3-D Poisson, 29 parameters")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    data = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[1]).parent
    write_results(data["rows"], data["meta"], out / "RESULTS.md")
    write_plot(data["rows"], out / "peers.png")
