"""The launchers of ``ablate sweep --launcher NAME``, by name. A new launcher (Ray, SkyPilot …) is
one module here holding a :class:`~experiments.sweep.launchers.base.Launcher` subclass, and one
line in :data:`LAUNCHERS`. The command line does not import this package to build ``--help``: the
name is checked by :func:`launcher`."""

from __future__ import annotations

from experiments.sweep.launchers.base import Launcher, LaunchOptions
from experiments.sweep.launchers.local import LocalLauncher
from experiments.sweep.launchers.slurm import SlurmLauncher
from experiments.sweep.launchers.wandb import WandbLauncher
from experiments.sweep.spec import SweepError

__all__ = ["LAUNCHERS", "Launcher", "LaunchOptions", "launcher"]

LAUNCHERS: dict[str, type[Launcher]] = {
    "local": LocalLauncher,
    "slurm": SlurmLauncher,
    "wandb": WandbLauncher,
}


def launcher(name: str) -> Launcher:
    """The launcher called ``name`` (:class:`SweepError` naming the choices when there is none)."""
    if name not in LAUNCHERS:
        raise SweepError(f"unknown launcher {name!r}; choices: {', '.join(LAUNCHERS)}")
    return LAUNCHERS[name]()

