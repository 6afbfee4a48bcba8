"""Mixtral (``MixtralForCausalLM``): Mistral's layout with a mixture of experts in place of each
feed-forward, our ``moe``: ``num_local_experts`` gated experts (``hidden_act`` picks the entry,
``intermediate_size`` their width: ``ffn_hidden``), ``num_experts_per_tok`` of them per token,
chosen by a bias-free linear router (``mlp.gate.weight``) whose fp32 softmax is renormalised over
the chosen experts. The experts' stacked weights, ``mlp.experts.gate_up_proj`` (E, 2I, D) as
``[gate; up]`` and ``down_proj`` (E, D, I), are each expert's ``gate_up`` and ``down``.
``router_aux_loss_coef`` is the load-balancing weight (``moe_aux_weight``; training only).

Refused: routing to one expert per token (Mixtral renormalises it to weight 1, ours scales by
the probability, as Switch), router jitter noise, attention dropout. Reference: Jiang et al. 2024,
"Mixtral of Experts", arXiv:2401.04088; layout read from
``transformers/models/mixtral/modeling_mixtral.py``.
"""

from __future__ import annotations

from variants.config import ModelConfig
from variants.interop.common import _require, _Weights
from variants.interop.llama import (EXPORT_OPTIONS as LLAMA_OPTIONS, EXPORT_SLOTS as LLAMA_SLOTS, config_fields,
                                    decoder_weights, model_config)
from variants.models import TransformerBase

HF_CLASS = "MixtralForCausalLM"
KIND = "lm"
EXPORT_SLOTS = {**LLAMA_SLOTS, "ffn": ("moe",), "bias": (False,), "expert_ffn": ("swiglu", "geglu", "reglu")}
EXPORT_OPTIONS = LLAMA_OPTIONS + ("window", "n_experts", "top_k", "expert_ffn", "moe_aux_weight")


def expert_weights(src: _Weights, ours: str, hf: str) -> dict:
    """One layer's router and experts, the stacked expert tensors split per expert."""
    w = {f"{ours}.ffn.router.weight": src.take(f"{hf}.mlp.gate.weight")}
    gate_up, down = src.take(f"{hf}.mlp.experts.gate_up_proj"), src.take(f"{hf}.mlp.experts.down_proj")
    for e in range(gate_up.size(0)):
        w[f"{ours}.ffn.experts.{e}.gate_up.weight"] = gate_up[e]
        w[f"{ours}.ffn.experts.{e}.down.weight"] = down[e]
    return w


def convert(config, src: _Weights, common: dict) -> tuple[ModelConfig, dict]:
    """(HF config, state dict, common fields) -> (our config, our weights)."""
    _require(config, "Mixtral", " (imports are dropout-free)", attention_dropout=0.0)
    _require(config, "Mixtral", " (no noise in the router)", router_jitter_noise=0.0)
    if config.num_experts_per_tok < 2:
        raise NotImplementedError(f"Mixtral with num_experts_per_tok={config.num_experts_per_tok} cannot be "
                                  f"imported (a renormalised single expert; ours scales it by its probability)")
    window = getattr(config, "sliding_window", None)
    dense = model_config(config, "Mixtral", common, norm_position="pre", bias=False,
                         **({} if window is None else {"window": window}))
    cfg = dense.replace(ffn="moe", expert_ffn=dense.ffn, n_experts=config.num_local_experts,
                        top_k=config.num_experts_per_tok, moe_aux_weight=float(config.router_aux_loss_coef))
    return cfg, decoder_weights(src, cfg, ffn=expert_weights)


def hf_config(cfg: ModelConfig, model: TransformerBase, common: dict):
    """The ``MixtralConfig`` of ``model`` (export)."""
    from transformers import MixtralConfig

    dense = cfg.replace(ffn=cfg.expert_ffn)  # the fields of the experts' entry (hidden_act)
    return MixtralConfig(**config_fields(dense, model), sliding_window=cfg.window, num_local_experts=cfg.n_experts,
                         num_experts_per_tok=cfg.top_k, router_aux_loss_coef=cfg.moe_aux_weight,
                         router_jitter_noise=0.0, attention_dropout=0.0, **common)


def after_export(hf_model) -> None:
    """transformers' default experts kernel (``grouped_mm``) needs, on a CPU, rows that start 16
    bytes apart: an expert width that is not a multiple of 4 fp32 values (42 from a d_model of 32)
    fails there. The exported object then computes its experts with the ``eager`` implementation;
    ``from_pretrained(..., experts_implementation="eager")`` does the same for a saved export."""
    if hf_model.config.intermediate_size % 4:
        hf_model.set_experts_implementation("eager")
