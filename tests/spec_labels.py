"""What the figure labels of the sweep specs mean, written out by hand for the tests."""

# Divergence label -> (GKDConfig.divergence, GKDConfig.beta or None).
DIVERGENCES = {
    'FKL': ('forward_kl', None),
    'JSD(0.1)': ('jsd', 0.1),
    'JSD(0.5)': ('jsd', 0.5),
    'JSD(0.9)': ('jsd', 0.9),
    'RKL': ('reverse_kl', None),
}


def check_divergence(built, label: str, where: str) -> None:
  """`built` (a dict with 'divergence' and 'beta') is the divergence that `label` names."""
  divergence, beta = DIVERGENCES[label]
  assert built['divergence'] == divergence, where
  if beta is not None:
    assert built['beta'] == beta, where


# Method label -> (GKDConfig.divergence, lmbda, fixed_data), as the CPU-sized arithmetic specs,
# the testbed's and the paper's use them (the paper's betas: test_paper_configs.PAPER_BETAS).
METHODS = {
    'SFT (continued)': ('cross_entropy', 0.0, 'targets'),
    'Supervised KD': ('forward_kl', 0.0, 'targets'),
    'SeqKD': ('cross_entropy', 0.0, 'teacher_samples'),
    'ImitKD': ('forward_kl', 0.5, 'targets'),
    'f-distill': ('total_variation', 0.5, 'teacher_samples'),
    'GKD (supervised, RKL)': ('reverse_kl', 0.0, 'targets'),
    'GKD (on-policy, FKL)': ('forward_kl', 1.0, 'targets'),
    'GKD (on-policy, RKL)': ('reverse_kl', 1.0, 'targets'),
    'GKD (on-policy, JSD(0.1))': ('jsd', 1.0, 'targets'),
    'GKD (on-policy, JSD(0.9))': ('jsd', 1.0, 'targets'),
    'GKD (supervised)': ('jsd', 0.0, 'targets'),
    'GKD (on-policy)': ('jsd', 1.0, 'targets'),
    # The on-policy testbed (launch/sweeps/testbed/).
    'Supervised KD (clean)': ('forward_kl', 0.0, 'targets'),
    'Supervised KD (ground truth)': ('forward_kl', 0.0, 'targets'),
    'Supervised KD (slips)': ('forward_kl', 0.0, 'targets'),
    'Supervised KD (both orders)': ('forward_kl', 0.0, 'targets'),
    'Supervised KD (both orders, RKL)': ('reverse_kl', 0.0, 'targets'),
    'Supervised KD (clean, RKL)': ('reverse_kl', 0.0, 'targets'),
}
# The small-scale reproduction (launch/sweeps/reproduction/) runs on-policy GKD with forward KL.
REPRODUCTION_METHODS = dict(METHODS, **{'GKD (on-policy)': ('forward_kl', 1.0, 'targets')})


def check_method(built, label: str, where: str, methods=METHODS) -> None:
  """`built` (a dict with 'divergence', 'lmbda' and 'fixed_data') is the method `label` names
  in `methods`."""
  assert (built['divergence'], built['lmbda'], built['fixed_data']) == methods[label], where
