"""Data: reading sources and named benchmarks, tokenising them into splits through a cache, packing, batching and
mixing them, and their quality checks and augmentation. Uses core and models (a paraphrasing model)."""
