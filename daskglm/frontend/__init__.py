"""The named-dim front end layer of daskglm.

xarray panels, the objectives solvers see, fixed effects, long tables and formulas.

See DEVELOPERS.md, "Layers": imports go one way, from the public API down to the kernels.
"""
