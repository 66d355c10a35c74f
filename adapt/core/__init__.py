"""The bottom layer: what every other layer may use and that uses no other part of adapt. Errors, atomic file
writes and the user cache, the config schema vocabulary, the device mesh and sharding rules, JAX's multi-process
runtime, the kept heap, and what the scripts share (one-line errors, exit code 2)."""
