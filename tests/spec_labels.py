"""What the figure labels of the sweep specs mean, written out by hand for the tests."""

# Divergence label -> (GKDConfig.divergence, GKDConfig.beta or None).
DIVERGENCES = {'FKL': ('forward_kl', None), 'JSD(0.1)': ('jsd', 0.1), 'JSD(0.5)': ('jsd', 0.5),
               'JSD(0.9)': ('jsd', 0.9), 'RKL': ('reverse_kl', None)}
