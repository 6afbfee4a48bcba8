"""tools/ sits below the Lightning layer: its modules import without Lightning, OmegaConf or W&B."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tools_imports_no_training_stack():
    script = textwrap.dedent("""
        import importlib, pkgutil, sys
        import tools
        names = [m.name for m in pkgutil.walk_packages(tools.__path__, "tools.")]
        for name in names:
            importlib.import_module(name)
        banned = {"lightning", "pytorch_lightning", "lightning_fabric", "omegaconf", "wandb"}
        found = sorted(m for m in sys.modules if m.split(".")[0] in banned)
        assert not found, found
        print(len(names))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) == 3  # errors, metrics, system: an empty walk cannot pass
