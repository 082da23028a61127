"""Settings for the suite's processes, the pytest workers and the runs they start, and the order
of its files.

The suite runs on the CPU. With libtpu installed (the `tpu-compile` extra that CI installs for
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
# XLA:CPU compiles the tests' tiny programs with LLVM's cheap passes only: compiling, not
# running, is most of a tiny run's time. Every process of the suite compiles alike, so the
# tests that compare two runs compare programs built the same way.
if 'PYTEST_XDIST_WORKER' not in os.environ:
  os.environ['XLA_FLAGS'] = (
      os.environ.get('XLA_FLAGS', '')
      + ' --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
  ).strip()
# The pytest-xdist workers inherit the controller's environment, and with it its cache.
if 'PYTEST_XDIST_WORKER' not in os.environ and 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _cache_dir = tempfile.mkdtemp(prefix='gkd_t5x_tests_jax_cache_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache_dir
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)

# The files whose runs take minutes, slowest first. pytest-xdist hands each worker one file at a
# time (pytest.ini), in collection order: a slow file collected last would leave the other
# worker idle while it runs.
SLOW_FILES = (
    'test_train.py',
    'test_faults.py',
    'test_quickstart.py',
    'test_decoder_only_train.py',
    'test_reproduce.py',
    'test_sharding.py',
    'test_mixture_rows.py',
    'test_teachers.py',
)


def pytest_collection_modifyitems(items):
  order = {name: rank for rank, name in enumerate(SLOW_FILES)}
  items.sort(key=lambda item: order.get(item.path.name, len(SLOW_FILES)))
