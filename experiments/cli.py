"""The ``ablate`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tools.errors import DEBUG_ENV, report_error


def _components(args: argparse.Namespace) -> int:
    from experiments.components import run_components

    run_components(d_model=args.d_model, steps=args.steps)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from experiments.demo import run_demo

    return run_demo(root=args.root, logger=args.logger, extra=args.overrides)


def _train(args: argparse.Namespace) -> int:
    from experiments.run.train import run_command

    return run_command(args.items)


def _load_sweep(args: argparse.Namespace):
    from experiments.sweep.spec import load_sweep

    return load_sweep(args.sweep, args.overrides)


def _sweep(args: argparse.Namespace) -> int:
    from experiments.run.config import ConfigError, check_runnable_here, check_trainer
    from experiments.sweep.launchers import LaunchOptions, launcher
    from experiments.sweep.sharing import parse_runs_per_gpu
    from experiments.sweep.spec import SweepError

    try:
        chosen = launcher(args.launcher)
        options = LaunchOptions(args.workers, args.retry_failed, args.gpus_per_run, args.wait,
                                parse_runs_per_gpu(args.runs_per_gpu))
        chosen.check(options)
        sweep = _load_sweep(args)
        if args.resume_from:
            sweep = _restore(args, sweep)
        for run in [*sweep.tune_runs, *sweep.runs]:  # every run's Trainer settings before any run starts
            try:
                check_trainer(run.cfg.trainer)
                if chosen.runs_here:
                    check_runnable_here(run.cfg.trainer, run.cfg.perf)
            except ConfigError as err:
                raise SweepError(f"{sweep.path}: run {run.name}: {err}") from None
        if sweep.tune is None:
            if args.stage:
                raise SweepError(f"{sweep.path}: --stage {args.stage}: this sweep has no tune: section (one stage)")
            return chosen.run(sweep, options)
        return _staged(args, chosen, options, sweep)
    except SweepError as err:
        report_error("ablate sweep", err)
        return 2


def _restore(args: argparse.Namespace, sweep):
    """``--resume-from REPORT_DIR``: the report's finished runs (and tuning record) back into the
    sweep's run directories, before the sweep runs what is left."""
    from experiments.report.collect import restore, restore_choices
    from experiments.sweep.spec import SweepError

    folder = Path(args.resume_from)
    if not (folder / "runs").is_dir():
        raise SweepError(f"--resume-from {folder}: not a report folder with run copies (no runs/ there)")
    if restore_choices(sweep, folder):
        sweep = _load_sweep(args)  # the confirmation runs at the recorded choices
    restored, refused = restore(sweep, folder)
    print(f"restored {len(restored)} finished run(s) from {folder} into {sweep.root}")
    for line in refused:
        print(f"not restored: {line}")
    return sweep


def _staged(args: argparse.Namespace, chosen, options, sweep) -> int:
    """A tuned sweep: the tuning stage, the choices it allows recorded, then the confirmation runs
    at those choices (``--stage`` runs one of the two)."""
    from experiments.sweep import tuning

    code = 0
    if args.stage in (None, "tune"):
        code = chosen.run(sweep.stage("tune"), options)
        data = tuning.record_sweep(sweep)
        print(f"tuning choices ({data['metric']}, {data['mode']}; recorded in {sweep.root / tuning.TUNING_FILE}):")
        print("\n".join(tuning.describe(data, sweep.variants)))
        if args.stage == "tune" or code == 130:
            return code
        sweep = _load_sweep(args)  # the confirmation runs at the choices just recorded
    view = sweep.stage("confirm")
    waiting = [r.name for r in sweep.runs if r.awaiting]
    if view.runs:
        code = chosen.run(view, options) or code
    if waiting:
        print(f"{len(waiting)} confirmation run(s) wait for their variant's tuning; run ablate sweep again "
              f"once its tuning runs have finished (ablate status shows them)")
    return code


def _report(args: argparse.Namespace) -> int:
    from experiments.report.page import build, default_out, rebuild
    from experiments.sweep.spec import SweepError

    try:
        if Path(args.sweep).is_dir():  # a committed report: rebuilt from its own folder
            if args.overrides or args.out:
                raise SweepError(f"{args.sweep}: a report folder is rebuilt as it is (no overrides, no --out)")
            path, cfg = rebuild(Path(args.sweep)), None
        else:
            sweep = _load_sweep(args)
            path, cfg = build(sweep, Path(args.out) if args.out else default_out(sweep)), sweep.runs[0].cfg
    except SweepError as err:
        report_error("ablate report", err)
        return 2
    print(f"wrote {path}")
    if args.wandb_artifact:
        from experiments.run.wandb_log import log_report

        where = log_report(path.parent, cfg.wandb.project if cfg else "ablate", cfg.wandb.entity if cfg else None,
                           Path(cfg.run.root if cfg else "runs"))
        print(f"logged {path.parent} as the W&B artifact report-{path.parent.name} ({where})")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from experiments.reproduce import reproduce
    from experiments.sweep.spec import SweepError

    try:
        return reproduce(Path(args.report), args.root, args.workers, args.variant, args.seed)
    except (SweepError, FileNotFoundError) as err:
        report_error("ablate reproduce", err)
        return 2


def _sweep_run(args: argparse.Namespace) -> int:
    """One run of a sweep, by name (what W&B agents call)."""
    from experiments.sweep.launchers.wandb import run_named
    from experiments.sweep.spec import SweepError, load_sweep

    names = [o.split("=", 1)[1] for o in args.overrides if o.startswith("sweep_run=")]
    overrides = [o for o in args.overrides if not o.startswith("sweep_run=")]
    try:
        if len(names) != 1:
            raise SweepError("give the run as sweep_run=<name>")
        argv = run_named(load_sweep(args.sweep, overrides), names[0])
    except SweepError as err:
        report_error("ablate sweep-run", err)
        return 2
    from experiments.run.train import run_command

    return run_command(argv[1:])


def _on_sweep(args: argparse.Namespace, prog: str, then) -> int:
    """``then(sweep)`` on the loaded sweep; a bad sweep file: its message and exit code 2."""
    from experiments.sweep.spec import SweepError

    try:
        sweep = _load_sweep(args)
    except SweepError as err:
        report_error(prog, err)
        return 2
    return then(sweep)


def _status(args: argparse.Namespace) -> int:
    from experiments.sweep.status import status_table

    return _on_sweep(args, "ablate status", lambda sweep: print(status_table(sweep)[0]) or 0)


def _wandb_view(args: argparse.Namespace) -> int:
    from experiments.report.wandb_view import command

    return _on_sweep(args, "ablate wandb-view", lambda sweep: command(sweep, args.out))


def _use(command: str):
    """The handler of a command on a trained run (``experiments.use.<command>_command``), imported
    when the command runs."""

    def handler(args: argparse.Namespace) -> int:
        from experiments import use

        return getattr(use, f"{command}_command")(args)

    return handler


def _bench(args: argparse.Namespace) -> int:
    from benchmarks.run import main_from_args

    return main_from_args(args)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ablate")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ablate", description="Controlled comparisons of Transformer "
                                     "architecture variants: train, sweep, report, reproduce, bench.")
    parser.add_argument("--version", action="version", version=f"ablate {_version()}")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback behind a refusal (also: ABLATE_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_components, _add_train, _add_sweep, _add_sweep_run, _add_status, _add_wandb_view,
                _add_bench, _add_report, _add_reproduce, _add_generate, _add_translate, _add_fill_mask,
                _add_attention, _add_export):
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `key=value` overrides may also come after the options (`ablate sweep S.yaml --workers 2 a=b`)
    stray = [item for item in extra if item.startswith("-") or "=" not in item or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if args.debug:  # in the environment, so that the runs a sweep starts inherit it
        os.environ[DEBUG_ENV] = "1"
    return args.func(args)


def _add_demo(commands) -> None:
    demo = commands.add_parser("demo", help="a small ablation on the bible data (LM and translation), "
                                             "ending in a report")
    demo.add_argument("--root", default="runs", help="run directory root")
    demo.add_argument("--logger", default="wandb", choices=["wandb", "none"])
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every run")
    demo.set_defaults(func=_demo)


def _add_components(commands) -> None:
    components = commands.add_parser("components", help="build every registered component in every model "
                                                        "kind; print parameter counts and checks")
    components.add_argument("--d-model", type=int, default=256)
    components.add_argument("--steps", type=int, default=3, help="timed training steps per model")
    components.set_defaults(func=_components)


def _add_train(commands) -> None:
    train = commands.add_parser("train", help="train one configuration",
                                description="YAML layers merge left to right, then dotted.key=value overrides")
    train.add_argument("items", nargs="+", metavar="CONFIG.yaml | key=value")
    train.set_defaults(func=_train)


def _add_sweep(commands) -> None:
    sweep = commands.add_parser(
        "sweep", help="run every variant x seed of a sweep file; re-running resumes",
        description="Runs a sweep (configs/sweeps/*.yaml). Re-running the same command skips completed runs, "
                    "resumes interrupted ones from their last checkpoint and reruns failed ones with --retry-failed.")
    sweep.add_argument("sweep", metavar="SWEEP.yaml")
    sweep.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every run")
    sweep.add_argument("--launcher", default="local", metavar="NAME",
                       help="a launcher of experiments/sweep/launchers/ (default local: a queue on this machine; "
                            "slurm: a submitit job array; wandb: a W&B sweep and the agent commands)")
    sweep.add_argument("--workers", type=int, default=None,
                       help="concurrent runs (local): default one per GPU group, or 1 on CPU")
    sweep.add_argument("--gpus-per-run", type=int, default=1, help="GPUs given to each run (local)")
    sweep.add_argument("--runs-per-gpu", default="1", metavar="K",
                       help="runs sharing each GPU (local), each limited to 1/K of its memory, through CUDA MPS "
                            "when a daemon can be started; 'auto' picks K from a short probe of the first run")
    sweep.add_argument("--retry-failed", action="store_true",
                       help="rerun runs that failed (those that failed for lack of disk space are rerun without it)")
    sweep.add_argument("--wait", action="store_true", help="slurm: wait for the job array and print the table")
    sweep.add_argument("--stage", choices=("tune", "confirm"), default=None,
                       help="a sweep with a tune: section: run only its tuning runs, or only the confirmation runs "
                            "whose variant's choice is recorded (default: both, in that order)")
    sweep.add_argument("--resume-from", default=None, metavar="REPORT_DIR",
                       help="first copy the finished runs of a report folder (its committed run files and tuning "
                            "record) into the run directories that have none: a sweep run in parts, across machines "
                            "or sessions, skips what is already done")
    sweep.set_defaults(func=_sweep)


def _add_sweep_run(commands) -> None:
    sweep_run = commands.add_parser("sweep-run", help="train one run of a sweep by name (used by W&B agents)")
    sweep_run.add_argument("sweep", metavar="SWEEP.yaml")
    sweep_run.add_argument("overrides", nargs="*", metavar="sweep_run=NAME | key=value")
    sweep_run.set_defaults(func=_sweep_run)


def _add_status(commands) -> None:
    status = commands.add_parser("status", help="state, step and headline metric of every run of a sweep")
    status.add_argument("sweep", metavar="SWEEP.yaml")
    status.add_argument("overrides", nargs="*", metavar="key=value", help="as given to ablate sweep")
    status.set_defaults(func=_status)


def _device_option(parser) -> None:
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def _add_generate(commands) -> None:
    gen = commands.add_parser("generate", help="continue a prompt with a trained LM run (its newest checkpoint)")
    gen.add_argument("run_dir", metavar="RUN_DIR", help="e.g. runs/lm-bible/layernorm-pre-rope-gelu-s0")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=int, default=50)
    gen.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None, help="nucleus: the smallest set reaching this mass")
    gen.add_argument("--seed", type=int, default=0)
    _device_option(gen)
    gen.set_defaults(func=_use("generate"))


def _add_translate(commands) -> None:
    tr = commands.add_parser("translate", help="translate stdin, one source per line, with a trained "
                                               "translation run (its newest checkpoint)")
    tr.add_argument("run_dir", metavar="RUN_DIR", help="e.g. runs/cpu-mt-multi30k/layernorm-pre-rope-gelu-s0")
    tr.add_argument("--beam", type=int, default=4, help="1: greedy")
    _device_option(tr)
    tr.set_defaults(func=_use("translate"))


def _add_fill_mask(commands) -> None:
    fm = commands.add_parser("fill-mask", help="the likeliest word pieces for each <mask> of a text, with a "
                                               "trained masked-LM run (its newest checkpoint)")
    fm.add_argument("run_dir", metavar="RUN_DIR", help="e.g. runs/mlm-bible/layernorm-pre-learned-gelu-s0")
    fm.add_argument("--text", required=True, help='e.g. "In the beginning <mask> created"')
    fm.add_argument("--top-k", type=int, default=5)
    _device_option(fm)
    fm.set_defaults(func=_use("fill_mask"))


def _add_attention(commands) -> None:
    at = commands.add_parser("attention", help="attention maps of a trained run on a text, as PNG heatmaps "
                                               "(every layer x head; translation: encoder, decoder and cross)")
    at.add_argument("run_dir", metavar="RUN_DIR", help="e.g. runs/demo-mt/layernorm-pre-rope-gelu-s0")
    at.add_argument("--text", required=True, help="LM: the text; translation: the source sentence")
    at.add_argument("--layer", type=int, default=None, help="only this layer (from 0)")
    at.add_argument("--head", type=int, default=None, help="only this head (from 0)")
    at.add_argument("--out", default=None, help="directory for the PNGs (default RUN_DIR/attention)")
    _device_option(at)
    at.set_defaults(func=_use("attention"))


def _add_export(commands) -> None:
    ex = commands.add_parser("export", help="write a trained run as a Hugging Face transformers model directory "
                                            "(GPT-2, LLaMA-like, BLOOM, Marian, BERT, DeBERTa or ModernBERT "
                                            "compositions)")
    ex.add_argument("run_dir", metavar="RUN_DIR", help="e.g. runs/demo-lm/layernorm-pre-learned-gelu-s0")
    ex.add_argument("--hf", required=True, metavar="OUT_DIR", help="the directory to write (new or empty)")
    ex.add_argument("--force", action="store_true", help="write into OUT_DIR even if it is not empty, "
                                                         "overwriting files of the same names")
    ex.add_argument("--family", default=None, metavar="MODEL_TYPE",
                    help="the Hugging Face family to write (e.g. roberta for an encoder); default: the first "
                         "that carries the composition")
    ex.set_defaults(func=_use("export"))


def _add_wandb_view(commands) -> None:
    view = commands.add_parser("wandb-view", help="a saved W&B workspace for a sweep (offline: its spec as JSON)")
    view.add_argument("sweep", metavar="SWEEP.yaml")
    view.add_argument("overrides", nargs="*", metavar="key=value", help="as given to ablate sweep")
    view.add_argument("--out", help="where to write the spec (default <run.root>/<sweep>/wandb-view.json)")
    view.set_defaults(func=_wandb_view)


def _add_bench(commands) -> None:
    bench = commands.add_parser(
        "bench", help="training and decoding throughput, MFU and peak memory against peer implementations",
        description="Times this project's models against x-transformers, Hugging Face transformers and "
                    "torch.nn.Transformer at identical dimensions (interleaved, warm-up excluded) and writes "
                    "the table to reports/perf/.")
    from benchmarks.config import add_arguments as add_bench_arguments

    add_bench_arguments(bench)
    bench.set_defaults(func=_bench)


def _add_report(commands) -> None:
    report = commands.add_parser("report", help="a sweep's runs as a report: seed statistics, deltas with "
                                                "confidence intervals, plots (reports/<sweep name>/)")
    report.add_argument("sweep", metavar="SWEEP.yaml|REPORT_DIR",
                        help="a sweep file, or a report folder (reports/<name>) to rebuild from its own files")
    report.add_argument("overrides", nargs="*", metavar="key=value", help="as given to ablate sweep")
    report.add_argument("--out", default=None, help="output folder (default: reports/<sweep name>)")
    report.add_argument("--wandb-artifact", action="store_true",
                        help="also log the report folder to W&B as an artifact report-<sweep name>")
    report.set_defaults(func=_report)


def _add_reproduce(commands) -> None:
    repro = commands.add_parser("reproduce", help="re-run a report's embedded sweep and compare every metric")
    repro.add_argument("report", metavar="REPORT_DIR", help="e.g. reports/cpu-lm-ffn")
    repro.add_argument("--root", default="runs/reproduce", help="where the re-runs go")
    repro.add_argument("--workers", type=int, default=None)
    repro.add_argument("--variant", action="append", default=[], help="only this variant (repeatable)")
    repro.add_argument("--seed", action="append", type=int, default=[], help="only this seed (repeatable)")
    repro.set_defaults(func=_reproduce)


if __name__ == "__main__":
    sys.exit(main())
