"""gkd_t5x: Generalized Knowledge Distillation (on-policy distillation) in JAX/Flax, T5X style.

Modules: `network` (T5 1.1, T5X-compatible), `decoder_only` (T5X's decoder-only network),
`decoding`, `divergences`, `objective` (the GKD loss), `rewards`, `models` (`GKDModel` and
`GKDDecoderOnlyModel` on T5X's model protocol), `partitioning`.
"""
