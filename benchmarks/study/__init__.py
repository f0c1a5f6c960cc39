"""The divergence study (``make study``): a pre-stated protocol over the hinted toy task where rollouts per prompt
during training (8) are far fewer than the largest evaluation k (256); see the README's "The divergence study"."""
