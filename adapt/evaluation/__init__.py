"""Evaluating a trained model: per-example predictions and confusion matrices, named evaluation sets watched during
training, generation-based evaluation and its text metrics. Uses the layers below (core, models, data, methods,
training)."""
