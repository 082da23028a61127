"""What the model needs of a vocabulary, as a protocol, and a vocabulary of bare token ids.

The model and the objective read a vocabulary's size and EOS id, and the calculator and string
rewards encode and decode text with it. seqio's vocabularies (`seqio.ByteVocabulary`,
`seqio.SentencePieceVocabulary`, ...) have exactly this interface and are what the tasks and
gin files pass; the core never imports seqio, so it takes any object of this shape.
"""

import dataclasses
from typing import Protocol, Sequence, Union


class Vocabulary(Protocol):
  """The part of `seqio.Vocabulary` that the model uses."""

  @property
  def vocab_size(self) -> int:
    ...

  @property
  def eos_id(self) -> int:
    ...

  def encode(self, s: Union[str, Sequence[int]]) -> Sequence[int]:
    ...

  def decode(self, ids: Sequence[int]) -> Union[str, Sequence[int]]:
    ...


@dataclasses.dataclass(frozen=True)
class TokenIdVocabulary:
  """Token ids that stand for themselves (as `seqio.PassThroughVocabulary`): for benchmarks
  and models trained on ids, where no text is involved.

  Attributes:
    vocab_size: the number of ids, 0 (padding) included.
    eos_id: the end-of-sequence id.
  """

  vocab_size: int
  eos_id: int = 1

  def encode(self, s: Sequence[int]) -> Sequence[int]:
    return list(s)

  def decode(self, ids: Sequence[int]) -> Sequence[int]:
    """The ids up to (not including) the first EOS."""
    ids = [int(i) for i in ids]
    return ids[: ids.index(self.eos_id)] if self.eos_id in ids else ids
