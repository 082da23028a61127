"""The suite runs on the CPU. With libtpu installed (the `tpu_compile` extra that CI installs for
tests/test_fit.py), jax would otherwise try a TPU first in every process the tests start, and
log libtpu's complaints about the missing chip."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
