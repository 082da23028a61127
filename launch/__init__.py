"""The launch tooling: sweep specs to commands, commands to runs, runs' results to figures.

    spec      a sweep spec (launch/sweeps/README.md) as typed values; parsing validates it
    plan      a spec's runs and their commands (values, rendered when a process starts), and
              the merged plan of several specs (launch/reproduce.py)
    runners   the commands run: one after another here or on a TPU pod slice, or on a pool
              of local worker processes; the DONE marker and the progress lines
    results   a run's metrics read back, aggregated over seeds, as CSV rows and tables
    plots     the figure of a panel, by plot kind

The command lines are scripts beside them: sweep.py, reproduce.py, figures.py, claims.py,
tpu_pod.py (run as `python launch/<script>.py` from the repository root, or `python -m
launch.<script>`).
"""

import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
