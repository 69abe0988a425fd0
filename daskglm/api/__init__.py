"""The public API and CLI layer of daskglm.

See DEVELOPERS.md, "Layers": imports go one way, from the public API down to the kernels.
"""
