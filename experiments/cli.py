"""The ``ablate`` command line."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from experiments.demo import run_demo

    run_demo(d_model=args.d_model, steps=args.steps)
    return 0


def _train(args: argparse.Namespace) -> int:
    from experiments.config import ConfigError, load_config

    configs = [a for a in args.items if "=" not in a]
    overrides = [a for a in args.items if "=" in a]
    try:
        cfg = load_config(configs, overrides)
    except ConfigError as err:
        print(f"ablate train: {err}", file=sys.stderr)
        return 2
    from experiments.train import train

    result = train(cfg)
    return 0 if result["state"] == "completed" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ablate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="build every registered component in both model kinds "
                                             "and print parameter counts and checks")
    demo.add_argument("--d-model", type=int, default=256)
    demo.add_argument("--steps", type=int, default=3, help="training steps per model")
    demo.set_defaults(func=_demo)

    train = commands.add_parser("train", help="train one configuration",
                                description="YAML layers merge left to right, then dotted.key=value overrides")
    train.add_argument("items", nargs="+", metavar="CONFIG.yaml | key=value")
    train.set_defaults(func=_train)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
