"""A researcher's own component, as it would live in their own package: registered when a
config names this module under ``plugins``, with a setting of its own. Nothing in ablate
imports it (tests/experiments/run/test_plugins.py does, through a config)."""

import torch.nn.functional as F

from variants.ffn import MLP
from variants.registry import FFNS, Option


@FFNS.register("scaled_gelu")
class ScaledGELU(MLP):
    """``down(gelu(ffn_scale * up(x)))``."""

    options = (Option("ffn_scale", 1.0, "multiplies the pre-activation", short="scale", examples=(0.5,)),)

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.ffn_scale = cfg.ffn_scale

    def act(self, x):
        return F.gelu(self.ffn_scale * x)
