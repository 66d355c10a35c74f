"""The package's import structure, read from its source (no import runs): no module of ``adapt`` takes part in an
import cycle, and an import inside a function is one of the kinds written down here with its reason, so none
hides an edge that would break the layers (import-linter, ``scripts/check.sh``, checks those; it sees these too)."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "adapt"

# Third-party packages imported where they are used, not at the top of the module, and why.
DEFERRED = {
    "sklearn": "the reference baselines and the label-error check only; ~1 s to import",
    "threadpoolctl": "pins scikit-learn to one BLAS thread around its fits, where those run",
    "cleanlab": "the label-error check (data.quality.label_errors) only",
    "datasketch": "the near-duplicate and leakage checks only",
    "scipy": "a few statistics (Welch's t, a binomial tail, the forgetting fit); keeps adapt.analysis.stats and "
             "scripts/table.py free of its import time",
    "matplotlib": "plots only; the backend is chosen where a plot is drawn",
    "rouge_score": "generation metrics of an sft trial only",
    "sacrebleu": "generation metrics of an sft trial only",
    "optuna": "adaptive search only (adapt.study.adaptive); an optional extra",
    "lm_eval": "the harness's task manager and evaluator, when an evaluation runs",
    "ray": "sweeps on a Ray cluster only; an optional extra",
    "torch": "reading a pickled PyTorch checkpoint (*.bin) only; never installed by the set-up",
    "gguf": "GGUF checkpoints only",
    "transformers": "configs and tokenizers, when a model is loaded: importing adapt.models stays ~2 s faster",
    "huggingface_hub": "a Hub download, when a model id is not a local folder",
    "tensorboardX": "the TensorBoard writer, when a run logs",
    "tqdm": "progress bars, when a loop shows one",
    "dp_accounting": "DP-SGD accounting, when privacy is on",
    "datasets": "Parquet files and Hub datasets as sources, when a config names one",
    "jax": "adapt.core imports no JAX at its top, so a script sets the platform and XLA flags before JAX starts "
           "(core.cli, core.distributed.initialize); Pallas' TPU kernels (models.splash) half a second, only when a "
           "step runs one",
}

# Imports of adapt modules inside a function: (the importing file, the imported module) -> why.
INTERNAL = {
    ("adapt/analysis/report.py", "adapt.analysis"):
        "the reference baselines read data through the pipeline, which loads JAX: a table without them starts "
        "without it (scripts/table.py)",
}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _targets(node, modules) -> list[str]:
    """The adapt modules an import statement names (``from a import b``: ``a.b`` when that is a module, else ``a``;
    the package has no relative imports)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in modules]
    assert not node.level, f"from {'.' * node.level}{node.module or ''}: the graph reads absolute imports only"
    base = node.module or ""
    found = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
    return found or ([base] if base in modules else [])


def _function_imports():
    """(file, imported module, line) of each import inside a function of the package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.Import):
                        yield from ((path, a.name, node.lineno) for a in node.names)
                    elif isinstance(node, ast.ImportFrom):
                        yield path, node.module or "", node.lineno


def test_no_import_cycles():
    """Every import of an adapt module by another, at the top or inside a function, as a graph: no cycle (Tarjan's
    strongly connected components; a component of more than one module is a cycle)."""
    modules = _modules()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name].update(t for t in _targets(node, modules) if t != name)
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == []
    assert sum(map(len, graph.values())) > 200  # the graph was read (an empty one has no cycles either)


def test_every_import_inside_a_function_has_its_reason():
    unexplained = []
    for path, module, line in _function_imports():
        where = str(path.relative_to(ROOT))
        if module.startswith("adapt"):
            if (where, module) not in INTERNAL:
                unexplained.append(f"{where}:{line} {module}")
        elif module.split(".")[0] not in DEFERRED:
            unexplained.append(f"{where}:{line} {module}")
    assert unexplained == []
    used = {(str(p.relative_to(ROOT)), m) for p, m, _ in _function_imports()}
    assert set(INTERNAL) <= used  # no stale entry
    assert {m.split(".")[0] for _, m in used} >= set(DEFERRED)
