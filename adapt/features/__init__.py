"""Trial features that extend the one train step and the trial: multi-task heads, distillation, DP-SGD. Each uses
the layers below (core ... evaluation), never the trial assembly above it."""
