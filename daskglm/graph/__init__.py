"""The graph building layer of daskglm: the only layer that imports dask's graph API.

See DEVELOPERS.md, "Layers": imports go one way, from the public API down to the kernels.
"""
