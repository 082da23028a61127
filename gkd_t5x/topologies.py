"""TPU chips and slices that a step is compiled for on a CPU host, with libtpu's compiler.

`jax.experimental.topologies.get_topology_desc` gives compile-only devices of a TPU slice that
the machine does not have (libtpu, the `tpu-compile` extra, holds the compiler); a program
compiled for them reports the memory and cost a slice would give it. `prepare_host` runs before
any device is used: it keeps jax on the CPU and keeps libtpu from querying the TPU VM's
metadata server and from logging to the terminal.

A topology is '<generation>:<chips per dimension>', e.g. 'v5e:4x4' (16 chips) or 'v4:2x2x2'.
Each generation's figures are per JAX device (one per chip; v3 has one per core, two per chip),
from the Cloud TPU system architecture pages: HBM capacity, peak dense bfloat16 FLOP/s and
HBM bandwidth.
"""

import contextlib
import dataclasses
import functools
import importlib.util
import math
import os
import sys
from typing import Any, Iterator, Sequence, Tuple

GiB = 2**30
# The pip requirement that installs the compiler (setup.py's `tpu-compile` extra; jax 0.10.2's
# `tpu` extra names the same version).
LIBTPU_REQUIREMENT = 'libtpu==0.0.42.*'
INSTALL_COMMAND = 'pip install -e ".[tpu-compile]"  # or: pip install "' + LIBTPU_REQUIREMENT + '"'


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation as JAX sees it (figures per JAX device).

  Attributes:
    hbm_bytes: HBM capacity.
    peak_flops: peak dense bfloat16 FLOP/s.
    hbm_bytes_per_s: HBM bandwidth.
    slices: slice shapes (chips per dimension) of up to 64 chips, smallest first.
    devices_per_chip: JAX devices per chip (2 on v3: one per core).
    chip_config: libtpu's chip configuration ('megacore': one device per chip of two cores).
  """

  hbm_bytes: int
  peak_flops: float
  hbm_bytes_per_s: float
  slices: Tuple[str, ...]
  devices_per_chip: int = 1
  chip_config: str = 'default'


_3D = ('2x2x1', '2x2x2', '2x2x4', '2x4x4', '4x4x4')
_2D = ('1x1', '2x2', '2x4', '4x4', '4x8', '8x8')
CHIPS = {
    # v3: 32 GiB, 123 TFLOP/s and 900 GB/s per chip of two devices.
    'v3': Chip(16 * GiB, 61.5e12, 450e9, ('2x2', '4x4', '4x8', '8x8'), devices_per_chip=2),
    'v4': Chip(32 * GiB, 275e12, 1200e9, _3D, chip_config='megacore'),
    'v5e': Chip(16 * GiB, 197e12, 819e9, _2D),
    'v5p': Chip(95 * GiB, 459e12, 2765e9, _3D),
    'v6e': Chip(32 * GiB, 918e12, 1640e9, _2D),
}
KNOWN_TOPOLOGIES = tuple(f'{name}:{shape}' for name, chip in CHIPS.items() for shape in chip.slices)


def prepare_host() -> None:
  """Sets what a CPU host needs before any device is used: jax's devices on the CPU (the TPU's
  come from `devices`), no metadata queries by libtpu, and its logging off. Settings made
  already (in the environment) are kept."""
  import jax  # pylint: disable=g-import-not-at-top

  for name, value in (
      ('TPU_SKIP_MDS_QUERY', '1'),
      # Compiling uses no chip: other processes on the host may hold libtpu's lock file.
      ('ALLOW_MULTIPLE_LIBTPU_LOAD', '1'),
      ('TPU_STDERR_LOG_LEVEL', '3'),
      ('TPU_MIN_LOG_LEVEL', '3'),
      ('TF_CPP_MIN_LOG_LEVEL', '3'),
  ):
    os.environ.setdefault(name, value)
  if not os.environ.get('JAX_PLATFORMS'):
    jax.config.update('jax_platforms', 'cpu')


def parse(topology: str) -> Tuple[str, Chip, int]:
  """(generation, its Chip, number of chips) of 'v5e:4x4'.

  Raises:
    ValueError: an unknown generation or a malformed shape, naming the known topologies.
  """
  name, _, shape = topology.partition(':')
  dims = shape.split('x')
  if name not in CHIPS or not all(d.isdigit() and int(d) > 0 for d in dims):
    raise ValueError(
        f'Unknown topology {topology!r}; known: {", ".join(KNOWN_TOPOLOGIES)} '
        '(larger slices of these generations work too).'
    )
  return name, CHIPS[name], math.prod(int(d) for d in dims)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
  """Sends file descriptor 2 to /dev/null: libtpu's (and TensorFlow's) C++ logging writes there
  directly."""
  sys.stderr.flush()
  saved = os.dup(2)
  with open(os.devnull, 'w') as devnull:
    os.dup2(devnull.fileno(), 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


def devices(topology: str, num_slices: int = 1) -> Tuple[Any, ...]:
  """The compile-only devices of `num_slices` slices of `topology`, slice after slice.

  Raises:
    ValueError: an unknown topology, or one libtpu does not know.
    RuntimeError: libtpu is not installed (the message gives the install command).
  """
  parse(topology)
  if num_slices < 1:
    raise ValueError(f'--num_slices must be >= 1, got {num_slices}.')
  if importlib.util.find_spec('libtpu') is None:
    raise RuntimeError(
        f'Compiling for a TPU topology needs libtpu, which is not installed: {INSTALL_COMMAND}'
    )
  return _devices(topology, num_slices)


@functools.lru_cache(maxsize=None)
def _devices(topology: str, num_slices: int) -> Tuple[Any, ...]:
  """`devices`, once per topology (libtpu answers the same every time)."""
  _, chip, num_chips = parse(topology)
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  try:
    with quiet_stderr():
      description = topologies.get_topology_desc(
          platform='tpu',
          topology_name=topology,
          num_slices=num_slices,
          chip_config_name=chip.chip_config,
          # One host holds a 2x2 block of chips; a one-chip slice has a one-chip host.
          **({'chips_per_host_bounds': (1, 1, 1)} if num_chips == 1 else {}),
      )
  except jax.errors.JaxRuntimeError as e:
    if 'INVALID_ARGUMENT' not in str(e):
      raise RuntimeError(f'libtpu failed: {str(e).splitlines()[0]}') from e
    raise ValueError(
        f'libtpu does not know topology {topology!r} ({str(e).splitlines()[0]}); '
        f'known: {", ".join(KNOWN_TOPOLOGIES)}.'
    ) from e
  return tuple(description.devices)


def slices_of(generation: str) -> Sequence[str]:
  """The topologies of a generation, smallest first ('v5e:1x1', 'v5e:2x2', ...)."""
  return tuple(f'{generation}:{shape}' for shape in CHIPS[generation].slices)
