"""The notebooks' comparison layer (students per set and seed, mean ± std, paired verdicts) and one study module per grid too big for a notebook."""
