"""Task specs: every registered task is complete, and the code around it reads the spec."""

import pytest

from lit.config import DataConfig, TaskConfig
from lit.specs import TASKS, task_spec
from variants.config import KINDS


@pytest.mark.parametrize("name", TASKS.names())
def test_every_task_spec_is_complete(name):
    spec = task_spec(name)
    assert spec.model_kind in KINDS
    assert set(spec.headline) <= set(spec.report_metrics) | {"val/bleu"}
    assert set(spec.compared) <= set(spec.report_metrics)
    assert set(spec.headline) <= set(spec.printed)
    assert spec.command in ("generate", "translate", "fill-mask")  # the command of its trained runs
    data = spec.datamodule(DataConfig(), 32, 0)
    assert data.max_seq_len == 32 and data.seed == 0
    assert TaskConfig(name=name).name == name


def test_unknown_task_lists_the_registered_ones():
    from experiments.run.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="unknown task 'mt'; choices: lm, mlm, translation"):
        load_config([], ["task.name=mt"])
