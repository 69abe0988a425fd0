"""Checkpoints: written atomically after every iteration; a new process resumes from one and
ends at the undisturbed estimates; a checkpoint of another model is refused."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import make_panel

import daskglm as dg
from daskglm.runtime.checkpoint import CheckpointMismatch


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    ds, x = make_panel(3, "negative_binomial", seed=41)
    path = tmp_path_factory.mktemp("ck") / "p.zarr"
    ds.chunk({"i": 4}).to_zarr(path, mode="w")
    return str(path), x


@pytest.mark.parametrize("solver", ["newton", "gd"])
def test_resume_in_a_new_process_ends_at_the_same_estimates(store, tmp_path, solver):
    path, x = store
    ref = dg.fit(path, "y", x, dg.NegativeBinomial(), solver=solver)
    ckpt = tmp_path / "state.json"
    seen = []
    with pytest.warns(dg.ConvergenceWarning, match="max_iter=2"):
        dg.fit(
            path,
            "y",
            x,
            dg.NegativeBinomial(),
            solver=solver,
            max_iter=2,
            checkpoint=ckpt,
            callback=lambda row: row["iteration"] and seen.append(json.loads(ckpt.read_text())["iteration"]),
        )
    # the file is complete and current after every iteration
    assert seen == [1, 2]
    script = textwrap.dedent(
        f"""
        import json, daskglm as dg
        res = dg.fit({path!r}, "y", {x!r}, dg.NegativeBinomial(), solver={solver!r},
                     checkpoint={str(ckpt)!r})
        print(json.dumps({{"resumed_from": res.resumed_from, "converged": res.converged,
                           "params": res.params.tolist(), "alpha": res.alpha}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["resumed_from"] == 2 and got["converged"]
    # Newton's state is its parameter vector: the resumed path is the undisturbed one. gd
    # restarts its step and preconditioner at the saved point: same optimum, to its tolerance
    rtol = 1e-10 if solver == "newton" else 1e-6
    b = ref.params.to_numpy()
    np.testing.assert_allclose(got["params"], b, rtol=rtol, atol=rtol * np.abs(b).max())
    np.testing.assert_allclose(got["alpha"], ref.alpha, rtol=rtol)
    assert json.loads(ckpt.read_text())["iteration"] > 2


def test_checkpoint_of_another_model_is_refused(store, tmp_path):
    path, x = store
    ckpt = tmp_path / "state.json"
    dg.fit(path, "y", x, dg.NegativeBinomial(), checkpoint=ckpt)
    with pytest.raises(CheckpointMismatch, match=r"different model or data \(differs in: params, x"):
        dg.fit(path, "y", x[:-1], dg.NegativeBinomial(), checkpoint=ckpt)
    with pytest.raises(CheckpointMismatch, match="differs in: family"):
        dg.fit(path, "y", x, "poisson", checkpoint=ckpt)


def test_unreadable_checkpoint_is_refused(store, tmp_path):
    path, x = store
    ckpt = tmp_path / "state.json"
    ckpt.write_text("{not json")
    with pytest.raises(CheckpointMismatch, match="cannot be read"):
        dg.fit(path, "y", x, "poisson", checkpoint=ckpt)


def test_checkpoint_and_start_params_conflict(store, tmp_path):
    path, x = store
    with pytest.raises(ValueError, match="either checkpoint="):
        dg.fit(path, "y", x, "poisson", checkpoint=tmp_path / "c.json", start_params=[0.0] * 10)
