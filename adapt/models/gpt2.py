"""GPT-2 (in progress)."""
