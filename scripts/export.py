"""Export a run's trained model: merged into plain weights (HF layout, loads in transformers) or as a PEFT adapter.

    .venv/bin/python scripts/export.py --workdir=runs/bbc-lora --out=exports/bbc-merged [--checkpoint best|latest]
    .venv/bin/python scripts/export.py --workdir=runs/bbc-lora --out=exports/bbc-adapter --peft

``--workdir`` is a run folder (``scripts/train.py``'s, or a sweep trial's); the model is rebuilt from its saved
``config.json`` and given the parameters of its best checkpoint (the latest when it kept no best). ``--peft``
writes ``adapter_config.json`` + ``adapter_model.safetensors`` for ``peft.PeftModel.from_pretrained`` (LoRA and
DoRA runs); otherwise the method is merged into the weights (methods that cannot merge are refused).
"""

from __future__ import annotations

import argparse

from adapt.core import cli, files


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="the run folder")
    parser.add_argument("--out", required=True, help="the folder to write")
    parser.add_argument("--peft", action="store_true", help="a PEFT adapter folder instead of merged weights")
    parser.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    args = parser.parse_args()
    files.output_folder(args.out, "--out")
    from adapt.experiment import export_run  # after the arguments are known good: importing JAX takes seconds

    print(f"wrote {export_run(args.workdir, args.out, peft=args.peft, checkpoint=args.checkpoint)}")


if __name__ == "__main__":
    cli.run(main)
