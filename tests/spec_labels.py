"""What the figure labels of the sweep specs mean, written out by hand for the tests."""

# Divergence label -> (GKDConfig.divergence, GKDConfig.beta or None).
DIVERGENCES = {'FKL': ('forward_kl', None), 'JSD(0.1)': ('jsd', 0.1), 'JSD(0.5)': ('jsd', 0.5),
               'JSD(0.9)': ('jsd', 0.9), 'RKL': ('reverse_kl', None)}


def check_divergence(built, label: str, where: str) -> None:
  """`built` (a dict with 'divergence' and 'beta') is the divergence that `label` names."""
  divergence, beta = DIVERGENCES[label]
  assert built['divergence'] == divergence, where
  if beta is not None:
    assert built['beta'] == beta, where
