"""The orchestration layer of daskglm: where passes run, worker setup, checkpoints, progress.

See DEVELOPERS.md, "Layers": imports go one way, from the public API down to the kernels.
"""
