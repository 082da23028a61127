"""The calculator of GSM8K (Cobbe et al. 2021), as the paper evaluates it.

GSM8K solutions annotate arithmetic as `<<48/2=24>>`. The calculator evaluates such an
expression without Python's eval (`evaluate_expression`: exact arithmetic on a small grammar),
corrects written results after the fact (`calculator`), and completes an annotation that a
decoding prefix leaves open after its '=' (`complete_calculator_annotation`).

Calculator-assisted decoding: when a decoded row ends right after the '=' of an open
annotation, the decoder is forced to write the computed result and '>>' before the model
continues, so a student is judged on its reasoning and not on its mental arithmetic.
`calculator_forcing` builds the `decoding.TokenForcing` that does this inside the jitted
decoding loop: a host callback that runs only after a token containing '='.
"""

import ast
import fractions
import math
import operator
import re
from typing import List, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from gkd_t5x import decoding
from gkd_t5x import vocabularies

Number = Union[fractions.Fraction, float]


# A complete annotation '<<48/2=24>>': the expression and the written result, neither holding
# '<', '>' or '='.
ANNOTATION_RE = re.compile(r'<<([^<>=]*)=([^<>=]*)>>')
# An annotation left open right after its '=' at the end of a decoding prefix.
_OPEN_ANNOTATION_RE = re.compile(r'<<([^<>=]*)=\Z')
# Thousands separators inside an expression ('1,000*3'), as Cobbe et al.'s calculator drops them.
_THOUSANDS_RE = re.compile(r'(?<=\d),(?=\d)')
_BINARY_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
# Integer powers are exact, so a big exponent could build an enormous number: cap the size of
# the result (in bits of numerator or denominator) instead of computing it.
_MAX_POWER_BITS = 4096
_DECIMALS = 6


def _power(base: Number, exponent: Number) -> Number:
  if isinstance(exponent, fractions.Fraction) and exponent.denominator == 1:
    if isinstance(base, fractions.Fraction):
      bits = max(base.numerator.bit_length(), base.denominator.bit_length())
      if bits * abs(exponent.numerator) > _MAX_POWER_BITS:
        raise ValueError(f'the power {base}**{exponent} is too large for the calculator.')
    return base ** int(exponent)
  result = float(base) ** float(exponent)
  if isinstance(result, complex):
    raise ValueError(f'the power {base}**{exponent} is not a real number.')
  return result


def _evaluate_node(node: ast.AST) -> Number:
  if isinstance(node, ast.Expression):
    return _evaluate_node(node.body)
  # type() rather than isinstance(): bool is an int subclass, and True is no number here.
  if isinstance(node, ast.Constant) and type(node.value) in (int, float):
    # Through the decimal text, so that 0.1 is exactly 1/10 and 0.1*3 is exactly 0.3.
    return fractions.Fraction(repr(node.value))
  if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
    return -_evaluate_node(node.operand)
  if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
    return _power(_evaluate_node(node.left), _evaluate_node(node.right))
  if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
    return _BINARY_OPS[type(node.op)](_evaluate_node(node.left), _evaluate_node(node.right))
  raise ValueError(f'the calculator does not take {type(node).__name__} syntax.')


def evaluate_expression(expression: str) -> Number:
  """The value of an arithmetic expression, computed without Python's eval.

  Allowed: int and decimal literals, + - * / // % **, parentheses and unary minus; thousands
  separators between digits ('1,000') are dropped. Anything else (names, calls, attributes,
  strings, comparisons, ...) is rejected before any evaluation. Arithmetic is exact (fractions)
  except for non-integer powers, which are floats.

  Raises:
    ValueError: for syntax outside that grammar, division by zero, a power too large to
      compute, or a non-real or non-finite result.
  """
  try:
    tree = ast.parse(_THOUSANDS_RE.sub('', expression.strip()), mode='eval')
    value = _evaluate_node(tree)
  except (SyntaxError, RecursionError) as e:
    raise ValueError(f'not an arithmetic expression: {expression!r}.') from e
  except (ZeroDivisionError, OverflowError) as e:
    raise ValueError(f'cannot compute {expression!r}: {e}.') from e
  if isinstance(value, float) and not math.isfinite(value):
    raise ValueError(f'{expression!r} is not finite.')
  return value


def format_result(value: Number) -> str:
  """A calculator result as written in annotations: integers exactly ('24', '-3'), other values
  rounded to 6 decimals without trailing zeros ('0.5', '0.333333')."""
  scaled = round(fractions.Fraction(value) * 10**_DECIMALS)
  sign = '-' if scaled < 0 else ''
  whole, fraction = divmod(abs(scaled), 10**_DECIMALS)
  if not fraction:
    return f'{sign}{whole}'
  return f'{sign}{whole}.{fraction:0{_DECIMALS}d}'.rstrip('0')


def calculator(text: str) -> str:
  """`text` with the result of every annotation `<<expr=result>>` recomputed from `expr`.

  '<<2*3=7>>' becomes '<<2*3=6>>'. An annotation whose expression the calculator does not take
  (see `evaluate_expression`) is left as it is; the text outside annotations never changes.
  """

  def correct(match: re.Match) -> str:
    try:
      value = evaluate_expression(match.group(1))
    except ValueError:
      return match.group(0)
    return f'<<{match.group(1)}={format_result(value)}>>'

  return ANNOTATION_RE.sub(correct, text)


def complete_calculator_annotation(prefix: str) -> Optional[str]:
  """The text that closes an annotation `prefix` ends inside, or None.

  If `prefix` ends with an open annotation right after its '=' ('... <<48/2='), returns the
  computed result followed by '>>' ('24>>'), which a decoder forces instead of sampling (Cobbe et
  al.'s calculator at decoding time). None if `prefix` does not end that way or the expression
  is not one the calculator takes.
  """
  match = _OPEN_ANNOTATION_RE.search(prefix)
  if not match:
    return None
  try:
    return format_result(evaluate_expression(match.group(1))) + '>>'
  except ValueError:
    return None


def _forced_ids(
    vocabulary: vocabularies.Vocabulary, prefix_ids: Sequence[int], text: str, completion: str
) -> List[int]:
  """Ids that continue `prefix_ids` (which decode to `text`) with `completion`.

  The continuation is read off the encoding of `text + completion` where that encoding starts
  with the emitted ids, so that pieces join as the tokenizer joins them; otherwise (the
  tokenizer would have split the emitted text differently) `completion` is encoded alone.
  """
  full = list(vocabulary.encode(text + completion))
  if full[: len(prefix_ids)] == list(prefix_ids) and len(full) > len(prefix_ids):
    return full[len(prefix_ids) :]
  return list(vocabulary.encode(completion))


def calculator_forcing(
    vocabulary: vocabularies.Vocabulary, vocab_size: int, *, max_forced: int = 16
) -> decoding.TokenForcing:
  """The `decoding.TokenForcing` of the calculator for a model's output vocabulary.

  Args:
    vocabulary: the output vocabulary (decodes the emitted ids, encodes the results).
    vocab_size: V, the model's logit count (a vocabulary padded to a multiple of 128 has more
      ids than `vocabulary`; the extra ids never trigger).
    max_forced: F, the most tokens one result may take (longer results are cut).

  Returns:
    TokenForcing whose trigger ids are the tokens whose text contains '='.
  """
  if vocab_size < vocabulary.vocab_size:
    raise ValueError(
        f"vocab_size = {vocab_size} is smaller than the vocabulary's "
        f'{vocabulary.vocab_size} ids.'
    )
  trigger = np.zeros((vocab_size,), bool)
  for token_id in range(vocabulary.vocab_size):
    trigger[token_id] = '=' in vocabulary.decode([token_id])

  def host(tokens_BxL: np.ndarray, step: np.ndarray, ask_B: np.ndarray) -> np.ndarray:
    forced_BxF = np.zeros((tokens_BxL.shape[0], max_forced), np.int32)
    for row in np.flatnonzero(ask_B):
      prefix_ids = [int(i) for i in tokens_BxL[row, : int(step) + 1]]
      text = vocabulary.decode(prefix_ids)
      completion = complete_calculator_annotation(text)
      if completion is not None:
        ids = _forced_ids(vocabulary, prefix_ids, text, completion)[:max_forced]
        forced_BxF[row, : len(ids)] = ids
    return forced_BxF

  def fn(tokens_BxL: jnp.ndarray, step: jnp.ndarray, ask_B: jnp.ndarray) -> jnp.ndarray:
    shape = jax.ShapeDtypeStruct((tokens_BxL.shape[0], max_forced), jnp.int32)
    return jax.pure_callback(host, shape, tokens_BxL, step, ask_B)

  return decoding.TokenForcing(trigger_ids=jnp.asarray(trigger), fn=fn, max_forced=max_forced)
