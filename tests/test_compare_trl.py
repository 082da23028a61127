"""benchmarks/compare_trl.py's TRL-style steps on the `tiny` configuration. They need the
`bench` extra (torch, transformers, trl); without it the module is skipped."""

import math

import numpy as np
import pytest

pytest.importorskip('torch')
pytest.importorskip('transformers')
pytest.importorskip('trl')

import torch  # noqa: E402

from benchmarks import compare_trl  # noqa: E402

TINY = compare_trl.step_time.BENCHES['tiny']


@pytest.fixture(name='gkd')
def fixture_gkd():
  return compare_trl.make_trl_gkd(TINY)


def _changed(gkd, step):
  """Runs step() and returns its result and whether it moved every student parameter."""
  before = [p.detach().clone() for p in gkd.student.parameters()]
  result = step()
  moved = all(not torch.equal(b, p) for b, p in zip(before, gkd.student.parameters()))
  return result, moved


def test_lambda1_step_samples_and_updates_the_student(gkd):
  inputs = torch.randint(2, TINY.vocab_size, (TINY.batch_size, TINY.input_length))
  (loss, length), moved = _changed(gkd, lambda: compare_trl.lambda1_step(gkd, inputs))
  assert math.isfinite(loss) and loss >= 0
  assert 1 <= length <= TINY.target_length
  assert moved


def test_lambda0_step_on_the_benchmark_batch(gkd):
  batch = compare_trl.step_time.make_batch(TINY)
  inputs, decoder_inputs, targets = (
      torch.tensor(np.asarray(batch[name]), dtype=torch.long)
      for name in ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens')
  )
  loss, moved = _changed(
      gkd, lambda: compare_trl.distill_step(gkd, inputs, decoder_inputs, targets)
  )
  assert math.isfinite(loss) and loss >= 0
  assert moved


def test_on_policy_batch_masks_labels_after_the_first_eos():
  # Start token, then a row that stops at EOS (HF pads it with 0) and one that never does.
  sequences = torch.tensor([[0, 5, 1, 0, 0], [0, 5, 6, 7, 8]])
  decoder_inputs, labels = compare_trl.on_policy_batch(sequences)
  np.testing.assert_array_equal(decoder_inputs, [[0, 5, 1, 0], [0, 5, 6, 7]])
  np.testing.assert_array_equal(labels, [[5, 1, -100, -100], [5, 6, 7, 8]])
