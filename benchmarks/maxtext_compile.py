"""MaxText's own train step compiled for a TPU slice from this CPU (its ``train_compile``), saved for
``benchmarks/maxtext_side_by_side.py``: the compiled program's HLO text, memory analysis and cost analysis.

Run in MaxText's own virtual environment (maxtext needs Python >= 3.12 and its own jax and libtpu), not ours:

    python3.12 -m venv ../maxtext-venv && ../maxtext-venv/bin/pip install "maxtext[tpu]==0.2.5"
    ALLOW_MULTIPLE_LIBTPU_LOAD=1 JAX_PLATFORMS=cpu MAXTEXT_OUT=runs/maxtext/scanned \\
      ../maxtext-venv/bin/python benchmarks/maxtext_compile.py \\
      ../maxtext-venv/lib/python3.12/site-packages/maxtext/configs/base.yml compile_topology=v5p-8 \\
      compile_topology_num_slices=1 model_name=llama3.1-8b per_device_batch_size=16 max_target_length=2048 \\
      dataset_type=synthetic steps=1 run_name=side-by-side base_output_directory=runs/maxtext/run \\
      [scan_layers=false base_num_decoder_layers=1|2 override_model_config=true]

MaxText's ``train_compile.main`` runs unchanged; its module's ``jit_and_compile`` is wrapped to keep the compiled
executable (``main`` prints its memory but returns nothing). XLA counts a loop's body once, so the side by side also
needs the step with 1 and 2 layers unrolled (the bracketed keys), as our planner does for its own scanned steps.
"""

import json
import os
import re
import time

from absl import app
from maxtext.trainers.pre_train import train_compile

OUT = os.environ.get("MAXTEXT_OUT", "runs/maxtext")
CAPTURED = {}
_jit_and_compile = train_compile.jit_and_compile


def _keep(*args, **kwargs):
    start = time.perf_counter()
    CAPTURED["compiled"] = _jit_and_compile(*args, **kwargs)
    CAPTURED["compile_s"] = time.perf_counter() - start
    return CAPTURED["compiled"]


def main(argv):
    train_compile.jit_and_compile = _keep
    train_compile.main(argv)
    compiled = CAPTURED["compiled"]
    os.makedirs(OUT, exist_ok=True)
    text = compiled.as_text()
    with open(os.path.join(OUT, "train_step.hlo.txt"), "w") as f:
        f.write(text)
    memory = compiled.memory_analysis()
    with open(os.path.join(OUT, "memory_analysis.json"), "w") as f:
        json.dump({k: int(getattr(memory, k)) for k in dir(memory) if k.endswith("_in_bytes")}, f, indent=1)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    with open(os.path.join(OUT, "cost_analysis.json"), "w") as f:
        json.dump({k: float(v) for k, v in cost.items() if k in ("flops", "bytes accessed", "optimal_seconds")}, f)
    with open(os.path.join(OUT, "summary.json"), "w") as f:
        json.dump({"argv": argv[1:], "compile_s": CAPTURED["compile_s"],
                   "custom_calls": sorted(set(re.findall(r'custom_call_target="([^"]+)"', text)))}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
