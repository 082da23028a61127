"""gkd_t5x.metrics against values computed by hand from the metrics' definitions."""

import math

import pytest

from gkd_t5x import metrics

# ---------------------------------------------------------------------------------------------
# ROUGE.


def test_rouge_by_hand():
  # Target bigrams: the-cat cat-sat sat-on on-the the-mat (5). Prediction bigrams: the-cat
  # cat-on on-the the-mat (4). Overlap 3: P = 3/4, R = 3/5, F = 2PR / (P + R) = 2/3.
  # Unigrams: the prediction's 5 tokens all occur in the target's 6: P = 1, R = 5/6, F = 10/11.
  # The LCS is the whole prediction (5 tokens), so ROUGE-L is ROUGE-1 here.
  scores = metrics.rouge(['The cat sat on the mat.'], ['the cat on the mat'])
  assert scores['rouge2'] == pytest.approx(100 * 2 / 3)
  assert scores['rouge1'] == pytest.approx(100 * 10 / 11)
  assert scores['rougeLsum'] == pytest.approx(100 * 10 / 11)


def test_rouge_means_over_examples_and_stems():
  # Identical (100) and disjoint (0) pairs average to 50; 'running' and 'runs' stem to 'run'.
  scores = metrics.rouge(['dogs running fast', 'a b'], ['dog runs fast', 'c d'])
  assert scores == pytest.approx({'rouge1': 50.0, 'rouge2': 50.0, 'rougeLsum': 50.0})


def test_rouge_lsum_splits_sentences():
  # rougeLsum takes the union LCS per target sentence: with ' . ' split into two sentences,
  # 'b c . a' matches 'a . b c' fully, whereas a single LCS over one sentence would not.
  target, prediction = 'a . b c', 'b c . a'
  assert metrics.rouge([target], [prediction])['rougeLsum'] == pytest.approx(100.0)


# ---------------------------------------------------------------------------------------------
# BLEU.


def test_bleu_known_values():
  assert metrics.bleu(['the cat sat on the mat'], ['the cat sat on the mat'])['bleu'] == (
      pytest.approx(100.0)
  )
  assert metrics.bleu(['the cat sat on the mat'], ['a dog ran far'])['bleu'] == 0.0


def test_bleu_with_brevity_penalty_by_hand():
  # Hypothesis 'a b c d' (c = 4) against 'a b c d e f' (r = 6): every n-gram of the hypothesis
  # matches, so the precisions are 4/4, 3/3, 2/2, 1/1 and BLEU = BP = exp(1 - r/c) = exp(-0.5).
  assert metrics.bleu(['a b c d e f'], ['a b c d'])['bleu'] == pytest.approx(100 * math.exp(-0.5))


def test_bleu_is_corpus_level():
  # Corpus statistics add up: matches (4+2, 3+1, 2+0, 1+0) over totals (6, 4, 2, 1); lengths
  # c = r = 6. The corpus BLEU is the geometric mean of 6/6, 4/4, 2/2, 1/1 = 100, whereas the
  # sentence BLEU of 'e f' alone is 0 (it has no 3-grams), so the mean over sentences is 50.
  targets = ['a b c d', 'e f']
  predictions = ['a b c d', 'e f']
  assert metrics.bleu(targets, predictions)['bleu'] == pytest.approx(100.0)
  # One wrong token in the second pair: matches (4+1, 3+0, 2, 1) over (6, 4, 2, 1), c = r = 6:
  # exp((log 5/6 + log 3/4 + log 1 + log 1) / 4) = (5/8) ** (1/4).
  assert metrics.bleu(targets, ['a b c d', 'e g'])['bleu'] == pytest.approx(100 * (5 / 8) ** 0.25)


# ---------------------------------------------------------------------------------------------
# Exact match.


def test_exact_match_strips_and_lowercases():
  scores = metrics.exact_match(['(A)', 'True', 'valid'], [' (a)\n', 'true', 'invalid'])
  assert scores == {'exact_match': pytest.approx(200 / 3)}
  assert math.isnan(metrics.exact_match([], [])['exact_match'])
  with pytest.raises(ValueError, match='same length, got 1 and 0'):
    metrics.exact_match(['a'], [])


# ---------------------------------------------------------------------------------------------
# GSM8K answers.


@pytest.mark.parametrize(
    'text,answer',
    [
        ('Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72', '72'),
        ('#### 1,234', '1234'),
        ('So she has 5. The answer is 1,234.', '1234'),
        ('The answer is -5.', '-5'),
        ('#### -12', '-12'),
        ('The answer is $18.00.', '18'),
        ('#### 72.0', '72'),
        ('#### 0.50', '0.5'),
        ('the answer is: 7', '7'),
        # '####' outranks 'The answer is', and the last marker counts.
        ('The answer is 3. #### 4', '4'),
        ('The answer is 3. Wait, the answer is 5.', '5'),
        # Missing answers.
        ('She has 5 apples.', None),
        ('#### ', None),
        ('The answer is unclear, 5 or 6.', None),
    ],
)
def test_extract_gsm8k_answer(text, answer):
  assert metrics.extract_gsm8k_answer(text) == answer


def test_gsm8k_accuracy():
  targets = ['... #### 1,234', '... #### 8', '... #### -3', '... #### 5']
  predictions = ['The answer is 1234.', '#### 8.0', 'The answer is 3.', 'I do not know.']
  assert metrics.gsm8k_accuracy(targets, predictions) == {'accuracy': 50.0}
  assert math.isnan(metrics.gsm8k_accuracy([], [])['accuracy'])


# ---------------------------------------------------------------------------------------------
# Accuracy with the calculator.


def test_gsm8k_calculator_accuracy():
  targets = ['#### 24', '#### 24', '#### 10', '#### 7']
  predictions = [
      # The final answer copies the last annotation's wrong result: the calculator fixes it.
      'She has 8*3 = <<8*3=25>>25 apples. #### 25',
      # Right without the calculator, and still right with it.
      '8*3 = <<8*3=24>>24. #### 24',
      # A final answer not copied from the last annotation is read as written.
      '<<2*5=11>>11 pens, minus one: #### 9',
      # No final answer at all.
      '<<3+4=7>>7',
  ]
  assert metrics.gsm8k_accuracy(targets, predictions) == {'accuracy': 25.0}
  assert metrics.gsm8k_calculator_accuracy(targets, predictions) == {
      'accuracy_with_calculator': 50.0
  }


# ---------------------------------------------------------------------------------------------
# Self-BLEU.


def test_self_bleu_identical_and_disjoint():
  assert metrics.self_bleu([['the cat sat on the mat'] * 4]) == pytest.approx(100.0)
  assert metrics.self_bleu([['a b c', 'd e f', 'g h i']]) == 0.0
  # The mean over inputs: one deterministic input (100), one fully diverse (0).
  assert metrics.self_bleu([['x y z'] * 3, ['a b', 'c d', 'e f']]) == pytest.approx(50.0)


def test_self_bleu_by_hand():
  # K = 2: 'a b c d' against 'a b c e' (and back, by symmetry). Matches: unigrams 3/4, bigrams
  # 2/3, trigrams 1/2, 4-grams 0/1, which 'exp' smoothing counts as 1 / (2 * 1) = 1/2. Equal
  # lengths, BP = 1: BLEU = (3/4 * 2/3 * 1/2 * 1/2) ** (1/4) = (1/8) ** (1/4).
  assert metrics.self_bleu([['a b c d', 'a b c e']]) == pytest.approx(100 * (1 / 8) ** 0.25)
  # K = 3 with one sample 'a b c d' and two copies of 'a b c e': each copy has the other copy as
  # a reference (100); 'a b c d' against both copies scores (1/8) ** (1/4) as above.
  assert metrics.self_bleu([['a b c d', 'a b c e', 'a b c e']]) == pytest.approx(
      (100 * (1 / 8) ** 0.25 + 100 + 100) / 3
  )


def test_self_bleu_rejects_bad_arguments():
  with pytest.raises(ValueError, match='non-empty sequence'):
    metrics.self_bleu([])
  with pytest.raises(ValueError, match=r'samples_per_input\[1\] must hold K >= 2'):
    metrics.self_bleu([['a', 'b'], ['c']])
  with pytest.raises(ValueError, match=r'samples_per_input\[0\] must hold K >= 2'):
    metrics.self_bleu(['ab'])
