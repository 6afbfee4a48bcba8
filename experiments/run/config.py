"""The run configuration: dataclasses are the schema; YAML layers and ``key=value`` overrides
are merged into it with OmegaConf and turned back into dataclasses, so every value is checked
(unknown keys, wrong types, unknown component names, impossible shapes) before any data or
model work starts."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lit.config import DataConfig, TaskConfig
from lit.specs import task_spec
from variants import ModelConfig
from variants.registry import POSITIONS, option_owners

LOGGERS = ("wandb", "none")
SEED_MAX = 2**32 - 1  # the seeds NumPy (and so Lightning's seed_everything) accept: 0 .. 2**32 - 1


def seed_problem(seed: Any) -> Optional[str]:
    """Why ``seed`` cannot seed a run (None when it can)."""
    if not 0 <= seed <= SEED_MAX:
        return f"{seed} is outside [0, 2**32 - 1], the seeds NumPy and Lightning accept"
    return None


class ConfigError(ValueError):
    """A configuration problem; the message names the key (and file)."""


@dataclass
class RunSection:
    root: str = "runs"
    experiment: str = "default"
    name: Optional[str] = None  # default: the components and the seed
    test: bool = True  # false: fit and validate only, never look at the test set (tuning runs)


@dataclass
class CheckpointSection:
    every_n_steps: int = 500
    keep: int = 2  # periodic checkpoints kept (the newest complete one is resumed from)


@dataclass
class PerfSection:
    warmup_steps: int = 5  # steps excluded from throughput
    every_n_steps: int = 50  # throughput logging interval
    peak_flops: Optional[float] = None  # device dense peak; default: table (GPU) or measured (CPU)
    compile: bool = False  # torch.compile the step's model, head and loss (worth it on GPUs)
    # replay each step's kernels as CUDA graphs (torch.compile, mode "reduce-overhead"): no launch
    # cost per kernel, which bounds small models on a GPU; language modelling (fixed shapes), CUDA only
    cuda_graphs: bool = False


@dataclass
class WandbSection:
    project: str = "ablate"
    entity: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    group: Optional[str] = None  # default: the variant (the run name without -s<seed>)
    job_type: Optional[str] = None  # default: the sweep, else the experiment
    sweep: Optional[str] = None  # set by the sweep launchers: the sweep's name
    baseline: bool = False  # set by the sweep launchers for the runs of the sweep's baseline
    table_rows: int = 50  # test translations (or 4 LM continuations) logged as a W&B Table; 0: none
    log_checkpoints: bool = False  # upload the final checkpoint as a W&B model artifact


def _trainer_defaults() -> Dict[str, Any]:
    return {"max_steps": 1000, "val_check_interval": 200, "check_val_every_n_epoch": None,
            "accelerator": "auto", "devices": 1, "precision": "32-true", "gradient_clip_val": 1.0,
            "log_every_n_steps": 10}


@dataclass
class DerivedSection:
    """Facts of the run's data, recorded by the run (from its tokenizer), never chosen: the model's
    vocabulary size and padding id. Left out of the run id (the data settings that decide them are
    in it); a value given, as in a run's own ``config.yaml``, is checked against the tokenizer."""

    vocab_size: Optional[int] = None
    pad_id: Optional[int] = None


# model keys whose values the data decides: a layer that sets them (a run's config.yaml written before
# ``derived`` existed, or an override) gives the value to check, under ``derived``
DERIVED_MODEL_KEYS = tuple(f.name for f in dataclasses.fields(DerivedSection))


@dataclass
class RunConfig:
    seed: int = 0
    run: RunSection = field(default_factory=RunSection)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    trainer: Dict[str, Any] = field(default_factory=_trainer_defaults)  # lightning.Trainer arguments
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    perf: PerfSection = field(default_factory=PerfSection)
    logger: str = "wandb"  # "wandb" (online with credentials, else offline) or "none"
    wandb: WandbSection = field(default_factory=WandbSection)
    derived: DerivedSection = field(default_factory=DerivedSection)
    # modules imported before the config is checked: a researcher's own registered components
    plugins: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        problem = seed_problem(self.seed)
        if problem:
            raise ValueError(f"key 'seed': {problem}")
        for key in ("name", "experiment"):  # a directory name under run.root, never a path out of it
            value = getattr(self.run, key)
            if value is not None and (not value or value in (".", "..") or "/" in value or "\\" in value):
                raise ValueError(f"key 'run.{key}': {value!r} must be one directory name (no path separator, "
                                 f"not '.' or '..'): runs stay inside run.root")
        steps = self.trainer.get("max_steps")
        if isinstance(steps, int) and not isinstance(steps, bool) and steps < 1 and steps != -1:
            raise ValueError(f"key 'trainer.max_steps': {steps}; a run trains at least 1 step (0 steps end "
                             f"completed with an untrained model); -1 leaves the length to trainer.max_epochs")
        if self.logger not in LOGGERS:
            raise ValueError(f"unknown logger {self.logger!r}; choices: {', '.join(LOGGERS)}")
        expected = task_spec(self.task.name).model_kind
        if self.model.kind != expected:
            raise ValueError(f"task.name={self.task.name!r} needs model.kind={expected!r}, "
                             f"got {self.model.kind!r}")
        block = getattr(self.data, "block_size", None)
        limit = POSITIONS.get(self.model.position).max_length(self.model)
        if block is not None and limit is not None and block > limit:
            raise ValueError(f"key 'data.block_size': {block} tokens per block, but position "
                             f"{self.model.position!r} encodes at most {limit} (model.max_seq_len); "
                             f"raise model.max_seq_len or shorten the blocks")
        if self.perf.cuda_graphs and not task_spec(self.task.name).blocks:
            raise ValueError(f"key 'perf.cuda_graphs': CUDA graphs replay fixed shapes, and {self.task.name} "
                             f"batches vary in length; tasks batched in blocks only (perf.compile compiles any task)")
        decode = getattr(self.task, "max_decode_len", None) if task_spec(self.task.name).translates else None
        if decode is not None and limit is not None and decode > limit:
            raise ValueError(f"key 'task.max_decode_len': translations of up to {decode} tokens, but position "
                             f"{self.model.position!r} encodes at most {limit} (model.max_seq_len); "
                             f"raise model.max_seq_len or lower task.max_decode_len")

    def model_for(self, tokenizer) -> ModelConfig:
        """The model this run builds: ``model`` with the tokenizer's vocabulary size and padding id
        (the config itself is not changed)."""
        facts = self._facts_of(tokenizer)
        return self.model.replace(**facts)

    def with_derived(self, tokenizer) -> "RunConfig":
        """This config with ``derived`` filled from the tokenizer (what the run records)."""
        return dataclasses.replace(self, derived=DerivedSection(**self._facts_of(tokenizer)))

    def _facts_of(self, tokenizer) -> dict[str, int]:
        """The tokenizer's vocabulary size and padding id; refused when ``derived`` records others."""
        facts = {key: getattr(tokenizer, key) for key in DERIVED_MODEL_KEYS}
        for key, found in facts.items():
            expected = getattr(self.derived, key)
            if expected is not None and expected != found:
                raise ConfigError(f"key 'derived.{key}': the config records {expected}, but the tokenizer gives "
                                  f"{found}: the data or data.vocab_size differ from the run that recorded it")
        return facts

    @property
    def run_name(self) -> str:
        if self.run.name:
            return self.run.name
        return f"{self.model.components_name()}-s{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.run.root) / self.run.experiment / self.run_name


def load_config(paths: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> RunConfig:
    """Merge YAML layers left to right, then ``dotted.key=value`` overrides, into a RunConfig.
    The modules named under ``plugins`` (any layer) are imported first, so the components they
    register are known when the config is checked."""
    layers = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            check_yaml_mapping(path, "config file")
            layers.append((str(path), OmegaConf.load(path)))  # its loader: 1e-3 is a float
        except OmegaConfBaseException as err:
            raise ConfigError(f"{path}: {_describe(err)}") from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
    try:
        layers.append(("command-line override", OmegaConf.from_dotlist(list(overrides))))
    except OmegaConfBaseException as err:
        raise ConfigError(f"command-line override: {_describe(err)}") from None
    for where, layer in layers:
        import_plugins(layer.get("plugins") if isinstance(layer, DictConfig) else None, where)
    merged = OmegaConf.structured(RunConfig)
    for where, layer in layers[:-1]:
        try:
            merged = OmegaConf.merge(merged, _options_moved(_derived_keys_moved(layer)))
        except OmegaConfBaseException as err:
            raise ConfigError(f"{where}: {_describe(err)}") from None
    try:
        merged = OmegaConf.merge(merged, _options_moved(_derived_keys_moved(layers[-1][1])))
        if not any(OmegaConf.select(layer, "model.kind") is not None for _, layer in layers):
            _kind_from_task(merged)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(f"command-line override: {_describe(err)}") from None
    except ValueError as err:  # validation in the dataclasses
        raise ConfigError(str(err)) from None


def _kind_from_task(merged) -> None:
    """``model.kind`` follows from the task (its spec's ``model_kind``): configs write the task
    alone. A layer that sets ``model.kind`` is checked against the task instead."""
    try:
        merged.model.kind = task_spec(merged.task.name).model_kind
    except ValueError:
        pass  # an unknown task.name: refused by name when the config is checked


def import_plugins(modules, where: str) -> None:
    """Import each module named in a layer's ``plugins`` (its components register themselves)."""
    if modules is None:
        return
    if isinstance(modules, str) or not all(isinstance(m, str) and m for m in modules):
        raise ConfigError(f"{where}: key 'plugins': a list of module names, got {modules!r}")
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ConfigError(f"{where}: key 'plugins': cannot import {module!r} ({err}); the module must be "
                              f"importable from the working directory or the Python path") from None


def _options_moved(layer):
    """A config layer with the components' settings (``model.n_kv_heads``) moved under
    ``model.options``, where the model config keeps them; other unknown keys stay, and are
    refused by name in the merge."""
    model = layer.get("model") if isinstance(layer, DictConfig) else None
    if not isinstance(model, DictConfig):
        return layer
    owners = option_owners()
    keys = [key for key in model if key in owners and key not in _MODEL_FIELDS]
    if not keys:
        return layer
    layer = layer.copy()
    for key in keys:
        OmegaConf.update(layer, f"model.options.{key}", layer.model.pop(key), force_add=True)
    return layer


def _derived_keys_moved(layer):
    """A config layer with ``model.vocab_size`` / ``model.pad_id`` moved to ``derived``: the
    tokenizer decides them, and a value given is a record to check, not a setting."""
    model = layer.get("model") if isinstance(layer, DictConfig) else None
    if not isinstance(model, DictConfig) or not any(key in model for key in DERIVED_MODEL_KEYS):
        return layer
    layer = layer.copy()
    derived = layer.get("derived") or {}
    for key in DERIVED_MODEL_KEYS:
        if key in model:
            value = layer.model.pop(key)
            if not isinstance(derived, DictConfig) or derived.get(key) is None:
                OmegaConf.update(layer, f"derived.{key}", value, force_add=True)
    return layer


# Settings that change how a run is logged or stored, never what it computes: left out of the run id.
_NOT_IN_RUN_ID = ("run.root", "logger", "wandb", "perf", "plugins", "checkpoint", "derived", "data.cache_dir", "data.num_workers",
                  "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.log_every_n_steps")
# Keys added after runs were made, with the value that computes what those runs computed: left out
# of the run id at that value, so existing run directories keep their ids (and resume).
# (A component's own settings need no entry: they enter the run id only away from their defaults.)
_ADDED_LATER = {"model.attention": "mha", "data.length_multiple": 1, "model.init": "gpt2", "run.test": True,
                "model.logit_softcap": None, "task.z_loss": 0.0, "data.max_words": None,
                "model.head_transform": False}


def check_yaml_mapping(path: Path, what: str) -> None:
    """A YAML file that must hold a mapping, checked with the safe loader (no ``!!python`` tags):
    any problem is a :class:`ConfigError` naming the file, and the line where YAML gives one."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except PermissionError:
        raise ConfigError(f"{path}: not readable (permission denied)") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} holds a mapping of keys at its top level, not a {type(data).__name__}")


_MODEL_DEFAULTS = ModelConfig()
_MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}


def run_id(cfg: RunConfig) -> str:
    """A short hash of the resolved configuration (what the run computes). The derived model keys
    enter at their schema defaults, as they did when runs were hashed before the tokenizer filled
    them in: the data settings that decide them are hashed already."""
    tree = OmegaConf.to_container(OmegaConf.structured(cfg))
    for key in DERIVED_MODEL_KEYS:
        tree["model"][key] = getattr(_MODEL_DEFAULTS, key)
    tree["model"].update(tree["model"].pop("options"))  # settings away from their defaults, as model keys
    for dotted in (*_NOT_IN_RUN_ID, *_ADDED_LATER):
        *parents, last = dotted.split(".")
        node = tree
        for key in parents:
            node = node.get(key, {})
        if dotted not in _ADDED_LATER or node.get(last) == _ADDED_LATER[dotted]:
            node.pop(last, None)
    text = json.dumps(tree, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def resolved(cfg: RunConfig) -> dict[str, Any]:
    """The resolved configuration as plain containers, as a run records it: the data's facts under
    ``derived`` only (the model section's vocabulary size and padding id are not settings)."""
    tree = OmegaConf.to_container(OmegaConf.structured(cfg))
    for key in DERIVED_MODEL_KEYS:
        tree["model"].pop(key)
    tree["model"].pop("options")
    tree["model"].update(cfg.model.option_values())  # every setting of the chosen components, as model keys
    return tree


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(resolved(cfg)))


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    message = str(err).split("\n")[0]
    return f"key {key!r}: {message}" if key else message


def _trainer_hints() -> dict[str, Any]:
    """``lightning.Trainer``'s arguments and their type hints (imports Lightning: called only
    where a run is about to start)."""
    import typing

    from lightning.pytorch import Trainer

    return typing.get_type_hints(Trainer.__init__)


def _fits(value: Any, hint: Any) -> Optional[bool]:
    """Whether a YAML value fits a type hint; None when the hint is not one a YAML value can be
    checked against (a class of Lightning's own, a list of callbacks)."""
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return value is None
    if origin is typing.Union:
        found = [_fits(value, a) for a in args]
        return True if any(found) else (None if None in found else False)
    if origin is typing.Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, dict) or hint in (list, dict):
        return isinstance(value, origin or hint) or None
    return None


def check_trainer(trainer: Dict[str, Any]) -> None:
    """The ``trainer.*`` keys against ``lightning.Trainer``'s signature: unknown keys (with the
    nearest names), values of the wrong type, negative ``limit_*`` fractions or counts."""
    import difflib

    hints = _trainer_hints()
    for key, value in trainer.items():
        if key not in hints or key in ("logger", "callbacks", "plugins", "default_root_dir",
                                       "enable_checkpointing", "use_distributed_sampler"):
            known = [k for k in hints if k != "return"]
            near = difflib.get_close_matches(key, known, n=3)
            why = ("is set by ablate itself" if key in hints else "is not a lightning.Trainer argument")
            raise ConfigError(f"key 'trainer.{key}': {why}" + (f"; did you mean {', '.join(near)}?"
                                                                 if near and key not in hints else ""))
        if _fits(value, hints[key]) is False:
            raise ConfigError(f"key 'trainer.{key}': {value!r} is not a {_describe_hint(hints[key])}")
        if key.startswith("limit_") and isinstance(value, (int, float)) and value < 0:
            raise ConfigError(f"key 'trainer.{key}': {value!r} must be 0 or more (a count of batches or a fraction)")


def _describe_hint(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("NoneType", "None")


def check_runnable_here(trainer: Dict[str, Any], perf: Optional[PerfSection] = None) -> None:
    """The accelerator the run asks for exists on this machine, and CUDA graphs run on CUDA
    (checked where the run starts, before any data work; a sweep for a cluster is loaded on
    machines without one)."""
    import torch

    accelerator = str(trainer.get("accelerator", "auto"))
    if perf is not None and perf.cuda_graphs and (accelerator not in ("auto", "cuda", "gpu")
                                                  or not torch.cuda.is_available()):
        where = "the CPU" if not torch.cuda.is_available() else f"trainer.accelerator={accelerator!r}"
        raise ConfigError(f"key 'perf.cuda_graphs': CUDA graphs need a CUDA device, and this run is on {where}")
    if accelerator in ("cuda", "gpu") and not torch.cuda.is_available():
        raise ConfigError(f"key 'trainer.accelerator': {accelerator!r} but this machine has no CUDA device "
                          f"(use auto or cpu)")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("key 'trainer.accelerator': 'mps' but this machine has no MPS device (use auto or cpu)")
    if accelerator == "tpu":
        from lightning.pytorch.accelerators import XLAAccelerator

        if not XLAAccelerator.is_available():
            raise ConfigError("key 'trainer.accelerator': 'tpu' but this machine has no TPU (use auto or cpu)")
