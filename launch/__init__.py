"""The launch tooling: sweep specs to commands, commands to runs, runs' results to figures.

Its command lines are scripts of this package, run from the repository root as
`python launch/<script>.py` (or `python -m launch.<script>`).
"""
