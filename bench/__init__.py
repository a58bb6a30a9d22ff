"""nightshift's benchmark suite: the real scoring path against plain baselines, as same-run ratios."""
