"""Bad input gives a clear error (or warning) that names the variable and the problem.

Each test builds a small numpy-backed panel (dims i=6, j=5), breaks one rule, and checks the
exception type and the message; ``missing="drop"`` is checked to fit instead of raising.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

import daskglm as dg

NI, NJ = 6, 5


def panel(seed: int = 0, family: str = "poisson") -> xr.Dataset:
    """y over (i, j) with covariates x1, x2 (full grid) and xi (over i only)."""
    rng = np.random.default_rng(seed)
    coords = {"i": np.arange(NI) * 10, "j": list("abcde")}
    ds = xr.Dataset(coords=coords)
    ds["x1"] = (("i", "j"), rng.normal(size=(NI, NJ)))
    ds["x2"] = (("i", "j"), rng.normal(size=(NI, NJ)))
    ds["xi"] = (("i",), rng.normal(size=NI))
    eta = 0.5 + 0.3 * ds["x1"] - 0.2 * ds["x2"]
    if family == "binomial":
        ds["n"] = (("i",), rng.integers(2, 8, size=NI).astype(float))
        y = rng.binomial(ds["n"].broadcast_like(eta).astype(int), 1 / (1 + np.exp(-eta)))
    elif family == "exponential":
        y = rng.exponential(np.exp(-eta))
        ds["d"] = (("i", "j"), (rng.random((NI, NJ)) < 0.7).astype(float))
    else:
        y = rng.poisson(np.exp(eta))
    ds["y"] = (("i", "j"), np.asarray(y, dtype=float))
    return ds


X = ["x1", "x2"]


# ------------------------------------------------------------------ non-finite values
def test_nan_and_inf_in_covariate_names_variable_and_cell_count():
    ds = panel()
    ds["x1"][0, 0] = np.nan
    ds["x1"][1, 2] = np.nan
    ds["x1"][3, 4] = np.inf
    with pytest.raises(dg.DataError, match=r"'x1' is NaN or infinite at 3 used cell"):
        dg.fit(ds, "y", X, family="poisson")
    assert issubclass(dg.DataError, ValueError)


def test_nan_in_lower_dim_covariate_counts_used_cells():
    # xi is NaN at one i: that is NJ cells of the panel, minus the one where y is missing
    ds = panel()
    ds["xi"][2] = np.nan
    ds["y"][2, 0] = np.nan
    with pytest.raises(dg.DataError, match=rf"'xi' is NaN or infinite at {NJ - 1} used cell"):
        dg.fit(ds, "y", ["x1", "xi"], family="poisson")


def test_missing_drop_fits_and_counts_dropped_cells():
    ds = panel()
    bad = [(0, 0), (1, 2), (3, 4)]
    for i, j in bad:
        ds["x1"][i, j] = np.nan
    res = dg.fit(ds, "y", X, family="poisson", missing="drop")
    assert res.converged
    assert res.n_dropped == len(bad)
    assert res.nobs == NI * NJ - len(bad)
    # the same as masking y at those cells (x1 stays NaN there, but those cells are not used)
    masked = ds.copy(deep=True)
    for i, j in bad:
        masked["y"][i, j] = np.nan
    ref = dg.fit(masked, "y", X, family="poisson")
    np.testing.assert_allclose(res.params.to_numpy(), ref.params.to_numpy(), rtol=1e-8)


# ------------------------------------------------------------------ family domains
@pytest.mark.parametrize("family", ["poisson", "negative_binomial"])
def test_negative_counts(family):
    ds = panel()
    ds["y"][2, 3] = -1.0
    with pytest.raises(dg.DataError, match=rf"'y' is negative .*at 1 used cell.*{family}"):
        dg.fit(ds, "y", X, family=family)


def test_binomial_y_exceeds_trials():
    ds = panel(family="binomial")
    ds["y"][1, 1] = ds["n"][1] + 1
    with pytest.raises(dg.DataError, match=r"'y' exceeds the number of trials at 1 used cell"):
        dg.fit(ds, "y", X, family=dg.Binomial(trials="n"))


def test_binomial_non_integer_y():
    ds = panel(family="binomial")
    ds["y"][0, 1] = 0.5
    ds["y"][4, 2] = 1.25
    with pytest.raises(dg.DataError, match=r"'y' is not a whole number of successes at 2 used cell"):
        dg.fit(ds, "y", X, family=dg.Binomial(trials="n"))


def test_exponential_event_not_zero_one():
    ds = panel(family="exponential")
    ds["d"][0, 0] = 2.0
    with pytest.raises(dg.DataError, match=r"event variable 'd' is not 0 or 1 .*at 1 used cell"):
        dg.fit(ds, "y", X, family=dg.Exponential(event="d"))


@pytest.mark.parametrize("bad", [0.0, -1.5])
def test_exponential_non_positive_time(bad):
    ds = panel(family="exponential")
    ds["y"][3, 1] = bad
    with pytest.raises(dg.DataError, match=r"'y' is not positive .*at 1 used cell"):
        dg.fit(ds, "y", X, family=dg.Exponential(event="d"))


def test_non_positive_exposure():
    ds = panel()
    ds["e"] = (("i",), np.array([1.0, 2.0, 0.0, 1.0, -1.0, 1.0]))
    # two bad i entries, NJ cells each
    with pytest.raises(dg.DataError, match=rf"exposure variable 'e' is zero or negative at {2 * NJ} used"):
        dg.fit(ds, "y", X, family="poisson", exposure="e")


def test_negative_weights():
    ds = panel()
    ds["w"] = xr.ones_like(ds["y"])
    ds["w"][0, 0] = -1.0
    ds["w"][5, 4] = -2.0
    with pytest.raises(dg.DataError, match=r"weights variable 'w' is negative at 2 used cell"):
        dg.fit(ds, "y", X, family="poisson", weights="w")


# ------------------------------------------------------------------ dims and coordinates
def test_covariate_with_two_extra_dims():
    ds = panel()
    ds["xk"] = (("i", "k", "m"), np.ones((NI, 2, 3)))
    with pytest.raises(ValueError, match=r"'xk' has dim\(s\) 'k', 'm' that are not panel dims"):
        dg.fit(ds, "y", ["x1", "xk"], family="poisson")


@pytest.mark.parametrize("role", ["offset", "weights"])
def test_offset_or_weights_with_extra_dim(role):
    ds = panel()
    ds["v"] = (("i", "k"), np.ones((NI, 2)))
    with pytest.raises(ValueError, match=rf"{role} variable 'v' has dim\(s\) 'k' that are not panel dims"):
        dg.fit(ds, "y", X, family="poisson", **{role: "v"})


def test_feature_dim_with_labels_of_missing_panel_dim_suggests_rename():
    ds = panel()
    ds["xj"] = xr.DataArray(np.arange(NJ, dtype=float), dims="jj", coords={"jj": ds["j"].values})
    with pytest.raises(ValueError, match=r"'xj' has dim 'jj'.*same labels as panel dim 'j'.*rename"):
        dg.fit(ds, "y", ["x1", "xj"], family="poisson")


def test_coordinate_mismatch_of_dataarray_covariate():
    ds = panel()
    xbad = xr.DataArray(
        ds["x1"].values, dims=("i", "j"), coords={"i": ds["i"].values + 1, "j": ds["j"].values}, name="xbad"
    )
    with pytest.raises(ValueError, match=r"'xbad' does not align with y along dim 'i'"):
        dg.fit(ds, "y", ["x2", xbad], family="poisson")


def test_duplicate_coordinate_labels_in_y():
    ds = panel().assign_coords(i=[0, 10, 10, 30, 40, 50])
    with pytest.raises(ValueError, match=r"'y' has duplicate coordinate labels along dim 'i'"):
        dg.fit(ds, "y", X, family="poisson")


def test_string_covariate_is_type_error():
    ds = panel()
    ds["xs"] = (("i",), np.array(list("uvwxyz")))
    with pytest.raises(TypeError, match=r"'xs' has dtype .* not numeric"):
        dg.fit(ds, "y", ["x1", "xs"], family="poisson")


def test_unknown_y_variable_lists_variables():
    ds = panel()
    with pytest.raises(KeyError, match=r"'yy' is not in the dataset .*'x1'.*'y'"):
        dg.fit(ds, "yy", X, family="poisson")


# ------------------------------------------------------------------ identification
def test_collinear_covariates_named():
    ds = panel()
    ds["x2"] = 2 * ds["x1"]
    with pytest.raises(dg.DataError, match=r"collinear(?=.*\bx1\b)(?=.*\bx2\b)"):
        dg.fit(ds, "y", X, family="poisson")


def test_constant_covariate_collinear_with_intercept():
    ds = panel()
    ds["cst"] = (("j",), np.full(NJ, 3.0))
    with pytest.raises(dg.DataError, match=r"collinear(?=.*\bcst\b)(?=.*\bIntercept\b)"):
        dg.fit(ds, "y", ["x1", "cst"], family="poisson")


def test_empty_panel_after_masking():
    ds = panel()
    ds["y"][:] = np.nan
    with pytest.raises(dg.DataError, match=r"empty after masking.*'y'"):
        dg.fit(ds, "y", X, family="poisson")


def test_complete_separation_warns():
    x = np.linspace(-1.0, 1.0, 20)
    ds = xr.Dataset({"y": ("obs", (x > 0).astype(float)), "x1": ("obs", x)})
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        dg.fit(ds, "y", ["x1"], family=dg.Binomial(trials=1))
    kinds = {w.category for w in rec}
    assert kinds & {dg.SeparationWarning, dg.ConvergenceWarning}, [str(w.message) for w in rec]
    msgs = " ".join(str(w.message) for w in rec if w.category is dg.SeparationWarning)
    assert "separation" in msgs


# ------------------------------------------------------------------ options
@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"family": "foo"}, r"family='foo' is not known"),
        ({"solver": "lbfgs-magic"}, r"solver='lbfgs-magic' is not known"),
        ({"cov_type": "HC9"}, r"cov_type='HC9' is not supported"),
    ],
)
def test_unknown_option_strings(kwargs, pattern):
    ds = panel()
    with pytest.raises(ValueError, match=pattern):
        dg.fit(ds, "y", X, **{"family": "poisson", **kwargs})


def test_cluster_cov_without_cluster():
    with pytest.raises(ValueError, match=r"cov_type='cluster' needs cluster="):
        dg.fit(panel(), "y", X, family="poisson", cov_type="cluster")


def test_cluster_on_non_panel_dim():
    with pytest.raises(ValueError, match=r"'k' is not a panel dim"):
        dg.fit(panel(), "y", X, family="poisson", cov_type="cluster", cluster="k")
