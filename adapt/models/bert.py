"""BERT and RoBERTa encoders (in progress)."""
