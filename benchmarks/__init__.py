"""natkit's benchmark harness: the paper's ablation tables at small scale, and the cost of NAT."""
