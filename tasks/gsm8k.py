r"""GSM8K grade-school math (Cobbe et al. 2021) on TFDS, with 4-shot chain-of-thought prompts.

Examples of TFDS `gsm8k:1.0.0` (splits 'train' and 'test'; the paper evaluates on 'test'):

  inputs:  COT_PROMPT + 'Q: ' + question + '\nA:'
  targets: answer

COT_PROMPT is the first four chain-of-thought exemplars of Wei et al. (2022), as the paper's
A.5 prints them (trees 21 - 15 = 6, cars 3 + 2 = 5, Leah 32 + 42 - 35 = 39, Jason 20 - 12 = 8),
each 'Q: <question>\nA: <answer>' and followed by a blank line. The targets are GSM8K's own
worked solutions, with the calculator annotations the model learns to write and the final answer
after '####':

  'Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n... #### 72'

T5's SentencePiece vocabulary has no newline: it encodes '\n' as a space.

Feature lengths `GSM8K_FEATURE_LENGTHS` (Table A.2): inputs 512, targets 320 tokens, EOS
included; the prompt alone is 217 words (1,039 characters, some 250 to 300 tokens), and an input
cut at 512 loses the end of its question.

Metrics (`gkd_t5x.metrics`), in percent: 'accuracy', the final numeric answer of the raw
prediction, and 'accuracy_with_calculator', that of the prediction after Cobbe et al.'s
calculator (`calculator.calculator`; `calculator.complete_calculator_annotation` applies it while
decoding, the exact form of the paper's "accuracy with calculator").

Registered at import, with `common.DEFAULT_VOCABULARY`:
  gsm8k
"""

import seqio
import tensorflow as tf

from gkd_t5x import metrics
from gkd_t5x.tasks import common

GSM8K_TFDS_NAME = 'gsm8k:1.0.0'
GSM8K_FEATURE_LENGTHS = {'inputs': 512, 'targets': 320}
SPLITS = ('train', 'test')

# (question, answer) of the first four exemplars of Wei et al. (2022), verbatim.
COT_EXEMPLARS = (
    (
        (
            'There are 15 trees in the grove. Grove workers will plant trees in the grove today. '
            'After they are done, there will be 21 trees. How many trees did the grove workers '
            'plant today?'
        ),
        (
            'There are 15 trees originally. Then there were 21 trees after some more were planted. '
            'So there must have been 21 - 15 = 6. The answer is 6.'
        ),
    ),
    (
        (
            'If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in '
            'the parking lot?'
        ),
        'There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.',
    ),
    (
        (
            'Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces of '
            'chocolate do they have left in total?'
        ),
        (
            'Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = '
            '74. After eating 35, they had 74 - 35 = 39. The answer is 39.'
        ),
    ),
    (
        (
            'Jason had 20 lollipops. He gave Dan some lollipops. Now Jason has 12 lollipops. How '
            'many lollipops did Jason give to Denny?'
        ),
        (
            'Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he '
            'gave Denny 20 - 12 = 8. The answer is 8.'
        ),
    ),
)
COT_PROMPT = ''.join(f'Q: {question}\nA: {answer}\n\n' for question, answer in COT_EXEMPLARS)


def format_question(question: str) -> str:
  r"""The model input of one GSM8K question: the 4-shot prompt, then 'Q: <question>\nA:'."""
  return f'{COT_PROMPT}Q: {question}\nA:'


@seqio.map_over_dataset
def prompt_with_exemplars(example):
  """{'question', 'answer', ...} -> {'inputs': format_question(question), 'targets': answer}."""
  return {
      'inputs': tf.strings.join([COT_PROMPT, 'Q: ', example['question'], '\nA:']),
      'targets': example['answer'],
  }


def register_gsm8k(name: str, vocabulary: seqio.Vocabulary) -> seqio.Task:
  """Registers (once) and returns the GSM8K task `name` with 'inputs'/'targets' of
  `vocabulary`; splits 'train' and 'test'."""
  config = {
      'tfds_name': GSM8K_TFDS_NAME,
      'splits': SPLITS,
      'prompt': COT_PROMPT,
      'vocabulary': vocabulary,
  }
  return common.register_task_once(
      name,
      config,
      lambda: common.tfds_task(
          name,
          tfds_name=GSM8K_TFDS_NAME,
          splits=SPLITS,
          preprocessor=prompt_with_exemplars,
          vocabulary=vocabulary,
          metric_fns=[metrics.gsm8k_accuracy, metrics.gsm8k_calculator_accuracy],
      ),
  )


register_gsm8k('gsm8k', common.DEFAULT_VOCABULARY)
