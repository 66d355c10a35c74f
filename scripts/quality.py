"""The data quality report (adapt/data/quality.py) of a config's data, without training: Markdown on stdout.

    .venv/bin/python scripts/quality.py --config=configs/finetune.py:chemprot [--config.data.quality.threshold=0.9]
    .venv/bin/python scripts/quality.py --benchmark=bbc_headlines
    .venv/bin/python scripts/quality.py --config.data.format=conll \
        --config.data.files="{'train': 'train.txt', 'dev': 'dev.txt', 'test': 'test.txt'}"

The data is the config's (``--config``; or the defaults of adapt.experiment.base.base_config pointed at
``--benchmark``; or those defaults alone), with any ``--config.KEY=VALUE`` overrides. Every check the config
leaves "off" runs as "report" unless an override names it (``--config.data.quality.label_errors=off``); a
"drop" stays, and the report counts what it removes from train. Over-long examples are counted in tokens of the
config's tokenizer (``init_from`` or ``model.name``) against ``data.max_length``, unless
``data.quality.max_chars`` sets a character limit. ``--json=PATH`` also writes the whole report as JSON.
"""

from __future__ import annotations

import argparse
import sys
import time

from adapt.core import cli
from adapt.core.errors import ConfigError
from adapt.experiment import configs


def load_config(spec: str | None, benchmark: str | None, overrides: list[str]):
    """The config whose data is checked, with ``overrides`` and every check left off by them set to report."""
    from adapt.data import catalog, quality
    from adapt.experiment import base_config

    if spec and benchmark:
        raise ConfigError("give --config or --benchmark, not both (a config names its benchmark itself)")
    given = configs.as_dict(overrides)
    if spec:
        config = configs.load(spec, given)
    else:
        config = base_config()
        if benchmark:
            catalog.apply(config, benchmark)
        config = configs.apply_overrides(config, given)
    if "quality" not in config.data:  # a config built without adapt.experiment.base.base_config
        with config.data.unlocked():
            config.data.quality = quality.defaults()
    for check in quality.CHECKS:
        if config.data.quality.get(check, "off") == "off" and f"data.quality.{check}" not in given:
            config.data.quality[check] = "report"
    quality.settings(config.data)  # bad modes or values: one line, before anything is read
    return config


def main():
    spec, overrides, rest = configs.parse_argv(sys.argv[1:], spec_required=False)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", help="a benchmark of adapt.data.catalog, instead of --config")
    parser.add_argument("--json", help="also write the whole report here")
    args = parser.parse_args(rest)
    start = time.perf_counter()
    config = load_config(spec, args.benchmark, overrides)
    from adapt.core.files import write_json
    from adapt.data import pipeline, quality
    from adapt.data.formats import Encoder
    from adapt.models import load_tokenizer

    q = quality.settings(config.data)
    encoder = None if q.too_long == "off" or q.max_chars else Encoder(load_tokenizer(config.init_from or
                                                                                      config.model.name))
    _, report = quality.clean(config.data, pipeline.raw_records(config.data), encoder)
    if args.json:
        write_json(args.json, report)
    print(quality.to_markdown(report, spec or args.benchmark or "data"))
    print(f"({time.perf_counter() - start:.1f} s)", file=sys.stderr)


if __name__ == "__main__":
    cli.run(main)
