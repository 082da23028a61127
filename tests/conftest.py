"""Settings for the suite's processes, the pytest workers and the runs they start.

The suite runs on the CPU. With libtpu installed (the `tpu_compile` extra that CI installs for
tests/test_fit.py), jax would otherwise try a TPU first in every process the tests start, and
log libtpu's complaints about the missing chip.

The processes share one JAX compilation cache for the session: most end-to-end tests start
runs of the same tiny configurations, and each would otherwise compile the same steps again
(a third of a tiny run's time). The cache starts empty, so no test depends on an earlier
session. Set JAX_COMPILATION_CACHE_DIR to choose the folder yourself.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# The pytest-xdist workers inherit the controller's environment, and with it its cache.
if 'PYTEST_XDIST_WORKER' not in os.environ and 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _cache_dir = tempfile.mkdtemp(prefix='gkd_t5x_tests_jax_cache_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache_dir
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
