"""Text metrics of the paper's tasks, as seqio metric functions, and a ROUGE reward.

seqio metric functions take the postprocessed targets and predictions of a whole split, two
equally long lists of `str`, and return a dict of named floats:

  metric_fn(targets: Sequence[str], predictions: Sequence[str]) -> Dict[str, float]

Every score is in percent (0-100); a metric over zero examples is NaN.

  rouge             XSum: ROUGE-1/2/Lsum F-measure (rouge-score, Porter stemmer), mean over
                    examples ('rouge1', 'rouge2', 'rougeLsum').
  bleu              WMT: sacrebleu corpus BLEU, 13a tokenizer ('bleu').
  exact_match       FLAN held-out (MMLU, BBH): strip + lowercase string equality ('exact_match').
  gsm8k_accuracy    GSM8K: the final numeric answer of the prediction equals the target's
                    ('accuracy').
  gsm8k_calculator_accuracy
                    the same after Cobbe et al.'s calculator (`gkd_t5x.calculator`) corrected
                    the prediction's `<<expr=result>>` annotations ('accuracy_with_calculator').

`self_bleu` (the diversity of Fig. 4) takes K samples per input instead of target/prediction
pairs, so it is a plain function for the figure scripts, not a seqio metric. `rouge_reward` is
ROUGE as a sequence reward of RL + GKD (`rewards.StringReward`).
"""

import decimal
import re
import statistics
from typing import Callable, Dict, List, Optional, Sequence

from rouge_score import rouge_scorer
import sacrebleu

from gkd_t5x import calculator as calculator_lib
from gkd_t5x import rewards
from gkd_t5x import vocabularies

ROUGE_TYPES = ('rouge1', 'rouge2', 'rougeLsum')


def _check_lengths(targets: Sequence[str], predictions: Sequence[str]) -> None:
  if len(targets) != len(predictions):
    raise ValueError(
        f'targets and predictions must have the same length, got {len(targets)} '
        f'and {len(predictions)}.'
    )


def _percent_mean(values: List[float]) -> float:
  return 100.0 * statistics.fmean(values) if values else float('nan')


# ---------------------------------------------------------------------------------------------
# XSum, WMT, FLAN.


def _split_sentences_for_rouge(summary: str) -> str:
  # rougeLsum takes sentences to be newline-separated; T5's `rouge` metric splits at ' . ' the
  # same way, so that multi-sentence outputs score as in the T5 / PaLM XSum numbers.
  return summary.replace(' . ', ' .\n')


def rouge(targets: Sequence[str], predictions: Sequence[str]) -> Dict[str, float]:
  """Mean ROUGE-1, ROUGE-2 and ROUGE-Lsum F-measure over examples, in percent.

  rouge-score's `RougeScorer(['rouge1', 'rouge2', 'rougeLsum'], use_stemmer=True)`: lowercased,
  non-alphanumerics removed, Porter-stemmed tokens; F = 2PR / (P + R) of the n-gram (or longest
  common subsequence) overlap, 0 where either side is empty.
  """
  _check_lengths(targets, predictions)
  scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
  scores = {rouge_type: [] for rouge_type in ROUGE_TYPES}
  for target, prediction in zip(targets, predictions):
    result = scorer.score(
        _split_sentences_for_rouge(target), _split_sentences_for_rouge(prediction)
    )
    for rouge_type in ROUGE_TYPES:
      scores[rouge_type].append(result[rouge_type].fmeasure)
  return {rouge_type: _percent_mean(values) for rouge_type, values in scores.items()}


def bleu(targets: Sequence[str], predictions: Sequence[str]) -> Dict[str, float]:
  """sacrebleu corpus BLEU of the predictions against one reference each, in [0, 100].

  `sacrebleu.corpus_bleu(predictions, [targets])` with its defaults: 13a tokenizer, case
  sensitive, n-grams up to 4, 'exp' smoothing (which matters only when a whole corpus has no
  match of some order). T5's `wmt_t2t_ende_v003` metric used the 'intl' tokenizer, which can
  differ from 13a by a few tenths of a point on German.
  """
  _check_lengths(targets, predictions)
  if not targets:
    return {'bleu': float('nan')}
  return {'bleu': sacrebleu.corpus_bleu(list(predictions), [list(targets)]).score}


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> Dict[str, float]:
  """Percent of predictions equal to their target after strip() and lower()."""
  _check_lengths(targets, predictions)
  return {
      'exact_match': _percent_mean(
          [float(t.strip().lower() == p.strip().lower()) for t, p in zip(targets, predictions)]
      )
  }


# ---------------------------------------------------------------------------------------------
# GSM8K: the final answer.

# A number as written in GSM8K solutions: an optional sign and '$', thousands separators, an
# optional decimal part ('1,234', '$18', '-$5', '0.25'). A trailing '.' (end of sentence) is not
# part of the number.
_NUMBER = r'-?\$?\d[\d,]*(?:\.\d+)?'
_NUMBER_RE = re.compile(_NUMBER)
# The markers of the final answer, by priority: GSM8K's '#### 72', then the CoT exemplars'
# 'The answer is 72.' (Wei et al. 2022). The number must follow the marker directly (spaces or a
# colon in between), so 'The answer is unclear; 5 ...' has no answer.
_ANSWER_MARKERS = (re.compile(r'####'), re.compile(r'the answer is', re.IGNORECASE))
_AFTER_MARKER_RE = re.compile(r'[\s:]*(' + _NUMBER + ')')


def normalize_number(text: str) -> Optional[str]:
  """The canonical form of a written number, or None if `text` is not one.

  '$1,234' -> '1234', '72.0' -> '72', '0.50' -> '0.5', '-3' -> '-3', '007' -> '7'.
  """
  text = text.strip()
  if not _NUMBER_RE.fullmatch(text):
    return None
  value = decimal.Decimal(text.replace('$', '').replace(',', ''))
  if value == value.to_integral_value():
    return str(int(value))
  return format(value.normalize(), 'f')


def extract_gsm8k_answer(text: str) -> Optional[str]:
  """The normalized final answer of a GSM8K solution, or None if it states none.

  The number right after the last '####'; if the text has no '####', the number right after the
  last 'The answer is' (any case). A marker not followed by a number gives None: the answer is
  missing, and a missing answer is wrong.
  """
  for marker in _ANSWER_MARKERS:
    matches = list(marker.finditer(text))
    if matches:
      number = _AFTER_MARKER_RE.match(text, matches[-1].end())
      return normalize_number(number.group(1)) if number else None
  return None


def _answer_accuracy(
    targets: Sequence[str], predictions: Sequence[str], answer_fn: Callable[[str], Optional[str]]
) -> float:
  _check_lengths(targets, predictions)
  correct = []
  for target, prediction in zip(targets, predictions):
    expected = extract_gsm8k_answer(target)
    correct.append(float(expected is not None and answer_fn(prediction) == expected))
  return _percent_mean(correct)


def gsm8k_accuracy(targets: Sequence[str], predictions: Sequence[str]) -> Dict[str, float]:
  """Percent of predictions whose final answer (`extract_gsm8k_answer`) equals the target's."""
  return {'accuracy': _answer_accuracy(targets, predictions, extract_gsm8k_answer)}


# ---------------------------------------------------------------------------------------------
# GSM8K: accuracy with the calculator (Cobbe et al. 2021; `gkd_t5x.calculator`).


def _answer_with_calculator(prediction: str) -> Optional[str]:
  """The final answer of `prediction` once the calculator has corrected it.

  A correction after the fact cannot redo the text that a wrong result led to, with one
  exception handled here: a final answer that copies the written result of the last annotation
  (the usual '...<<8*3=25>>25 apples. #### 25') takes that annotation's corrected result. Any
  other final answer is read from the corrected text unchanged. The exact "accuracy with
  calculator" forces `complete_calculator_annotation` while decoding.
  """
  corrected = calculator_lib.calculator(prediction)
  answer = extract_gsm8k_answer(prediction)
  written = calculator_lib.ANNOTATION_RE.findall(prediction)
  if answer is not None and written and normalize_number(written[-1][1]) == answer:
    # `calculator` keeps every annotation in place, so the last one is still the last one.
    return normalize_number(calculator_lib.ANNOTATION_RE.findall(corrected)[-1][1])
  return extract_gsm8k_answer(corrected)


def gsm8k_calculator_accuracy(
    targets: Sequence[str], predictions: Sequence[str]
) -> Dict[str, float]:
  """Percent of predictions whose final answer after the calculator (`calculator.calculator`, and
  a final answer copied from the last annotation takes its corrected result) equals the target's."""
  return {
      'accuracy_with_calculator': _answer_accuracy(targets, predictions, _answer_with_calculator)
  }


# ---------------------------------------------------------------------------------------------
# Diversity.


def self_bleu(samples_per_input: Sequence[Sequence[str]]) -> float:
  """Self-BLEU (Zhu et al. 2018, Texygen) of K samples per input, in [0, 100].

  For every input and every sample i of its K samples: sentence BLEU of sample i against the
  other K - 1 samples as references; the mean over samples, then over inputs. 100 means K
  identical outputs, 0 that no two samples share a word.

  BLEU is sacrebleu's `sentence_bleu` with its defaults: 13a tokenizer, n-grams up to 4, 'exp'
  smoothing (NIST: the k-th order without a match counts as precision 1 / (2^k * total)) and
  effective order (orders longer than the sample are left out, so short samples are not
  zeroed); the brevity penalty uses the reference closest in length. A sample sharing no unigram
  with its references scores 0.

  Args:
    samples_per_input: for each input, its K >= 2 sampled strings (K may differ by input).

  Returns:
    The mean Self-BLEU, a float in [0, 100].
  """
  if isinstance(samples_per_input, str) or not samples_per_input:
    raise ValueError('samples_per_input must be a non-empty sequence of per-input sample lists.')
  per_input = []
  for index, samples in enumerate(samples_per_input):
    if isinstance(samples, str) or len(samples) < 2:
      raise ValueError(
          f'samples_per_input[{index}] must hold K >= 2 sample strings, got {samples!r}.'
      )
    per_input.append(
        statistics.fmean(
            sacrebleu.sentence_bleu(
                sample, [other for j, other in enumerate(samples) if j != i]
            ).score
            for i, sample in enumerate(samples)
        )
    )
  return statistics.fmean(per_input)


def rouge_reward(
    vocabulary: vocabularies.Vocabulary, rouge_type: str = 'rouge2'
) -> rewards.StringReward:
  """F-measure of `rouge_type` ('rouge1', 'rouge2', 'rougeLsum', ...) against the target, as a
  reward of RL + GKD (scored on the host inside the jitted step). In gin, with dynamic
  registration: `from gkd_t5x import metrics`, then `REWARD = @metrics.rouge_reward()`."""
  scorer = rouge_scorer.RougeScorer([rouge_type], use_stemmer=True)

  def score(inputs, predictions, references):
    del inputs
    return [
        scorer.score(ref, pred)[rouge_type].fmeasure for pred, ref in zip(predictions, references)
    ]

  return rewards.StringReward(vocabulary, score)
