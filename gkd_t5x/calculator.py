"""Calculator-assisted decoding (Cobbe et al. 2021), as the paper evaluates GSM8K.

GSM8K solutions annotate arithmetic as `<<48/2=24>>`. When a decoded row ends right after the
'=' of an open annotation, the calculator computes the expression
(`metrics.complete_calculator_annotation`) and the decoder is forced to write the result and
'>>' before the model continues, so a student is judged on its reasoning and not on its mental
arithmetic. `calculator_forcing` builds the `decoding.TokenForcing` that does this inside the
jitted decoding loop: a host callback that runs only after a token containing '='.
"""

from typing import List, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from gkd_t5x import decoding
from gkd_t5x import metrics


def _forced_ids(vocabulary: seqio.Vocabulary, prefix_ids: Sequence[int], text: str,
                completion: str) -> List[int]:
  """Ids that continue `prefix_ids` (which decode to `text`) with `completion`.

  The continuation is read off the encoding of `text + completion` where that encoding starts
  with the emitted ids, so that pieces join as the tokenizer joins them; otherwise (the
  tokenizer would have split the emitted text differently) `completion` is encoded alone.
  """
  full = list(vocabulary.encode(text + completion))
  if full[:len(prefix_ids)] == list(prefix_ids) and len(full) > len(prefix_ids):
    return full[len(prefix_ids):]
  return list(vocabulary.encode(completion))


def calculator_forcing(vocabulary: seqio.Vocabulary, vocab_size: int, *,
                       max_forced: int = 16) -> decoding.TokenForcing:
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
    raise ValueError(f'vocab_size = {vocab_size} is smaller than the vocabulary\'s '
                     f'{vocabulary.vocab_size} ids.')
  trigger = np.zeros((vocab_size,), bool)
  for token_id in range(vocabulary.vocab_size):
    trigger[token_id] = '=' in vocabulary.decode([token_id])

  def host(tokens_BxL: np.ndarray, step: np.ndarray, ask_B: np.ndarray) -> np.ndarray:
    forced_BxF = np.zeros((tokens_BxL.shape[0], max_forced), np.int32)
    for row in np.flatnonzero(ask_B):
      prefix_ids = [int(i) for i in tokens_BxL[row, :int(step) + 1]]
      text = vocabulary.decode(prefix_ids)
      completion = metrics.complete_calculator_annotation(text)
      if completion is not None:
        ids = _forced_ids(vocabulary, prefix_ids, text, completion)[:max_forced]
        forced_BxF[row, :len(ids)] = ids
    return forced_BxF

  def fn(tokens_BxL: jnp.ndarray, step: jnp.ndarray, ask_B: jnp.ndarray) -> jnp.ndarray:
    shape = jax.ShapeDtypeStruct((tokens_BxL.shape[0], max_forced), jnp.int32)
    return jax.pure_callback(host, shape, tokens_BxL, step, ask_B)

  return decoding.TokenForcing(trigger_ids=jnp.asarray(trigger), fn=fn, max_forced=max_forced)
