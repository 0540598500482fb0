"""Evaluation of frozen features: linear, MLP and kNN probes against a random-init baseline."""
