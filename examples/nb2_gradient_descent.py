"""Negative binomial (NB2) without inverses: Adam, gradient descent, L-BFGS and Newton-Schulz.

    python examples/nb2_gradient_descent.py

The question in ``seeds/nb2-gradient-descent-qa.txt``: "I'm fitting a negative binomial by
gradient descent (encrypted ML: no inverses or transposes); how do I account for the
dispersion?" Answer: make log(alpha) a parameter like the coefficients. Its gradient is a
per-cell sum in the same pass as the coefficients' gradient, so every solver below estimates it
jointly with the betas.

The data are real: the RAND Health Insurance Experiment (20,190 people, outpatient visits on
nine covariates) that statsmodels ships, whose NB2 fit is published (R ``glm.nb``, Stata
``nbreg``). Each solver is run beside Newton-Raphson and statsmodels; the table gives the
passes over the data each needed, seconds, and the largest relative distance of any
coefficient (or alpha) from Newton's estimates and the log-likelihood gap.

* ``adam``, ``gd``: inverse-free (matrix products and additions only). The Hessian is computed
  at the start, and again when progress stalls, to build a full-matrix preconditioner by
  Newton-Schulz iterations (:mod:`daskglm.solvers.preconditioning`).
* ``lbfgs``: scipy's L-BFGS-B (its two-loop recursion divides by scalars only) in the same
  preconditioned coordinates.
* ``newton_schulz``: Newton steps whose ``H^-1 g`` comes from Newton-Schulz iterations warm
  started from the previous inverse: the passes of Newton, without a solve or factorisation.
"""

import time
import warnings

import numpy as np
import pandas as pd
import statsmodels.api as sm
import xarray as xr

import daskglm as dg

data = sm.datasets.randhie.load()
cols = list(data.exog.columns)
ds = xr.Dataset({c: ("obs", data.exog[c].to_numpy(float)) for c in cols})
ds["y"] = ("obs", data.endog.to_numpy(float))
family = dg.NegativeBinomial(alpha=None)  # alpha=None: log(alpha) estimated with the betas

fits = {}
for solver in ("newton", "newton_schulz", "lbfgs", "gd", "adam"):
    t0 = time.perf_counter()
    res = dg.fit(ds, "y", cols, family, solver=solver, progress=False)
    fits[solver] = (res, time.perf_counter() - t0)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    ref = sm.NegativeBinomial(data.endog, sm.add_constant(data.exog), loglike_method="nb2").fit(
        method="newton", disp=0, maxiter=100, tol=1e-12
    )
    t_sm = time.perf_counter() - t0

names = ["Intercept", *cols]
newton = fits["newton"][0]
b_newton = np.array([*newton.params[names], newton.alpha])

rows = []
for solver, (res, seconds) in fits.items():
    b = np.array([*res.params[names], res.alpha])
    rows.append(
        {
            "solver": solver,
            "converged": res.converged,
            "iterations": res.n_iter,
            "passes": res.passes,
            "seconds": round(seconds, 2),
            "max rel. distance to Newton": f"{np.max(np.abs(b - b_newton) / np.abs(b_newton)):.1e}",
            "LL gap to Newton": f"{newton.llf - res.llf:.1e}",
        }
    )
b_sm = ref.params.to_numpy()
rows.append(
    {
        "solver": "statsmodels NB2 (newton)",
        "converged": bool(ref.mle_retvals["converged"]),
        "iterations": ref.mle_retvals["iterations"],
        "passes": "",
        "seconds": round(t_sm, 2),
        "max rel. distance to Newton": f"{np.max(np.abs(b_sm - b_newton) / np.abs(b_newton)):.1e}",
        "LL gap to Newton": f"{newton.llf - ref.llf:.1e}",
    }
)
pd.set_option("display.width", 160)
print(f"RAND HIE, NB2 with log(alpha): {newton.nobs:.0f} observations, {b_newton.size} parameters\n")
print(pd.DataFrame(rows).to_string(index=False))

ns = fits["newton_schulz"][0]
print("\nNewton-Schulz, per iteration (products are P x P, P = 11; one pass each, no halvings):")
print(ns.history[["ll", "decrement", "ns_warm", "ns_iterations", "ns_products", "ns_residual"]].to_string())

adam = fits["adam"][0]
table = pd.DataFrame(
    {
        "adam": [*adam.params[names], adam.alpha],
        "newton_schulz": [*ns.params[names], ns.alpha],
        "newton": b_newton,
        "newton se": [*newton.bse[names], newton.alpha_bse],
        "statsmodels": b_sm,
    },
    index=[*names, "alpha"],
)
print("\nEstimates side by side:\n")
print(table.round(7).to_string())
print(
    f"\nAdam rebuilt its preconditioner {int(adam.history['refreshes'].iloc[-1])} times "
    "(one extra Hessian pass each)."
)
