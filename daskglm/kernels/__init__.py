"""The numpy and compiled (numba) kernels layer of daskglm: no dask.

See DEVELOPERS.md, "Layers": imports go one way, from the public API down to the kernels.
"""
