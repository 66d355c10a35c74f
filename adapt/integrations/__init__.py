"""Adapters to other tools: lm-evaluation-harness. The top layer: it may use any other."""
