"""GKD steps on simulated 8-device meshes (8x1, 4x2) equal the single-device step, for the
encoder-decoder and the decoder-only model."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import runs

PROBE = os.path.join(os.path.dirname(__file__), 'sharded_step_probe.py')


def check_probe(lmbda, architecture):
  env = dict(runs.environment(8), JAX_PLATFORMS='cpu')
  out = subprocess.run(
      [sys.executable, PROBE, str(lmbda), architecture],
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
      check=True,
  )
  results = json.loads(out.stdout.strip().splitlines()[-1])
  loss, grad_norm, _ = results['single']
  assert np.isfinite(loss) and grad_norm > 0
  for mesh in ('mesh_8x1', 'mesh_4x2'):
    # Loss, gradient norm and the trained sequences' length agree (for lambda = 1: the
    # sampler draws the same tokens however the batch is split).
    np.testing.assert_allclose(results[mesh]['values'], results['single'], rtol=1e-5, atol=1e-6)
  # The teacher is sharded by the student's rules (mlp over 'model'), not replicated.
  assert results['mesh_4x2']['teacher_wi_spec'] == ['None', 'model']
  assert results['mesh_4x2']['teacher_wi_shard_shape'] == [16, 16]
  assert results['mesh_8x1']['teacher_wi_shard_shape'] == [16, 32]


@pytest.mark.parametrize('lmbda', [0.0, 1.0])
def test_sharded_step_equals_single_device(lmbda):
  check_probe(lmbda, 'encoder_decoder')


@pytest.mark.parametrize('lmbda', [0.0, 1.0])
def test_decoder_only_sharded_step_equals_single_device(lmbda):
  check_probe(lmbda, 'decoder_only')
