"""Studies of many trials: sweep grammar and expansion, the runner with its results database, adaptive (Optuna)
search, packing trials into one population, active learning. Uses the trial assembly and the analysis below."""
