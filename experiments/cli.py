"""The ``ablate`` command line."""

from __future__ import annotations

import argparse
import sys


def _components(args: argparse.Namespace) -> int:
    from experiments.components import run_components

    run_components(d_model=args.d_model, steps=args.steps)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from experiments.demo import run_demo

    run_demo(root=args.root, logger=args.logger, extra=args.overrides)
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

    demo = commands.add_parser("demo", help="a small ablation on the bible data (LM and translation), "
                                             "ending in a table")
    demo.add_argument("--root", default="runs", help="run directory root")
    demo.add_argument("--logger", default="wandb", choices=["wandb", "none"])
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every run")
    demo.set_defaults(func=_demo)

    components = commands.add_parser("components", help="build every registered component in both model "
                                                        "kinds; print parameter counts and checks")
    components.add_argument("--d-model", type=int, default=256)
    components.add_argument("--steps", type=int, default=3, help="timed training steps per model")
    components.set_defaults(func=_components)

    train = commands.add_parser("train", help="train one configuration",
                                description="YAML layers merge left to right, then dotted.key=value overrides")
    train.add_argument("items", nargs="+", metavar="CONFIG.yaml | key=value")
    train.set_defaults(func=_train)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
