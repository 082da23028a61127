"""Copies a run's params (no optimizer state) into a small checkpoint directory of their own.

python launch/export_params.py --checkpoint=/tmp/teacher --output=launch/checkpoints/x
"""

from absl import app
from absl import flags

from gkd_t5x import checkpoints

flags.DEFINE_string(
    'checkpoint', None, 'A checkpoint step directory or a run directory.', required=True
)
flags.DEFINE_string('output', None, 'The new model directory.', required=True)


def main(argv):
  del argv
  step_dir = checkpoints.export_params(flags.FLAGS.checkpoint, flags.FLAGS.output)
  print(f'Wrote {step_dir}')


if __name__ == '__main__':
  app.run(main)
