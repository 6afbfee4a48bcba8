"""What a bench run measures: one dataclass, overridable from the command line (``--set k=v``)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

SECTIONS = ("train-lm", "train-seq2seq", "train-encoder", "loss", "decode", "positions", "moe", "breakdown",
            "profile", "sweep")
# the positions section (our gpt2-style model with each position scheme) runs by default on a GPU;
# the encoder section (our bert-style encoder against BertForMaskedLM), the moe section (llama-style
# dense vs iso-FLOP mixtures of experts) and the sweep section (whole `ablate sweep` runs, minutes)
# only when asked for
CPU_SECTIONS = ("train-lm", "train-seq2seq", "loss", "decode", "breakdown", "profile")
GPU_SECTIONS = ("train-lm", "train-seq2seq", "loss", "decode", "positions", "breakdown", "profile")


@dataclass
class BenchConfig:
    device: str = "auto"  # auto = cuda when available, else cpu
    threads: Optional[int] = None  # CPU threads; default: physical cores
    compile: bool = False  # add "ablate + torch.compile" rows
    sections: tuple[str, ...] = CPU_SECTIONS
    presets: tuple[str, ...] = ("gpt2", "llama", "alibi", "vaswani")
    warmup: int = 2  # untimed units per implementation before the timed rounds
    repeats: int = 15  # timed rounds (one unit of every implementation each)
    decode_repeats: int = 7
    seed: int = 0
    dropout: float = 0.0
    # decoder-only LM training
    vocab_size: int = 8192
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int = 1024
    lm_seq_len: int = 256
    lm_batch: int = 8
    # encoder-decoder training (the "vaswani" composition); 0 = the LM's value
    s2s_vocab_size: int = 0
    s2s_d_model: int = 0
    s2s_n_heads: int = 0
    s2s_d_ff: int = 0
    s2s_layers: int = 3
    s2s_src_len: int = 64
    s2s_tgt_len: int = 64
    s2s_batch: int = 32
    # decoding with the KV cache
    decode_batch: int = 8
    decode_prompt: int = 32
    decode_new: int = 128
    beam: int = 4
    # the sweep section: `ablate sweep` of sweep_runs lm-bible runs, K at a time for each K
    sweep_runs: int = 16
    sweep_steps: int = 200
    sweep_ks: tuple[int, ...] = (1, 2, 4, 8)
    sweep_repeats: int = 1
    sweep_set: tuple[str, ...] = ()  # extra key=value overrides of the sweep's runs
    out: str = "reports/perf"
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = [s for s in self.sections if s not in SECTIONS]
        if unknown:
            raise ValueError(f"unknown bench section(s) {unknown}; choices: {', '.join(SECTIONS)}")
        from benchmarks.models import PRESETS

        bad = [p for p in self.presets if p not in PRESETS]
        if bad:
            raise ValueError(f"unknown preset(s) {bad}; choices: {', '.join(PRESETS)}")
        if self.repeats < 1 or self.decode_repeats < 1 or self.warmup < 0:
            raise ValueError("repeats must be >= 1 and warmup >= 0")
        if self.sweep_runs < 1 or self.sweep_steps < 1 or self.sweep_repeats < 1 or not self.sweep_ks \
                or any(not 1 <= k <= 8 for k in self.sweep_ks):
            raise ValueError("sweep_runs, sweep_steps and sweep_repeats must be >= 1, sweep_ks from 1 to 8")
        bad = [item for item in self.sweep_set if "=" not in item]
        if bad:
            raise ValueError(f"sweep_set: {bad} not of the form key=value")

    def dims(self) -> dict:
        """The model fields every LM row shares."""
        return dict(vocab_size=self.vocab_size, d_model=self.d_model, n_heads=self.n_heads,
                    n_layers=self.n_layers, d_ff=self.d_ff, dropout=self.dropout,
                    max_seq_len=max(self.lm_seq_len, self.s2s_src_len, self.s2s_tgt_len,
                                    self.decode_prompt + self.decode_new))

    def s2s_dims(self) -> dict:
        """The model fields of the encoder-decoder rows (training and translation decoding)."""
        return {**self.dims(), "n_layers": self.s2s_layers, "vocab_size": self.s2s_vocab_size or self.vocab_size,
                "d_model": self.s2s_d_model or self.d_model, "n_heads": self.s2s_n_heads or self.n_heads,
                "d_ff": self.s2s_d_ff or self.d_ff}

    def override(self, items: list[str]) -> "BenchConfig":
        """A copy with ``key=value`` items applied through OmegaConf, as run configs are (types
        checked against the fields; a list is ``[a,b]`` or, for brevity, ``a,b``)."""
        tuples = {f.name for f in dataclasses.fields(self) if f.type.startswith("tuple")}
        dotlist = []
        for item in items:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"bad setting {item!r}: not of the form key=value")
            dotlist.append(f"{key}=[{value}]" if key in tuples and not value.startswith("[") else item)
        try:
            merged = OmegaConf.merge(OmegaConf.structured(self), OmegaConf.from_dotlist(dotlist))
            return OmegaConf.to_object(merged)
        except ConfigKeyError as err:
            known = ", ".join(f.name for f in dataclasses.fields(self))
            raise ValueError(f"unknown setting {err.full_key!r}; keys: {known}") from None
        except OmegaConfBaseException as err:
            raise ValueError(f"bad setting {err.full_key!r}: {str(err).splitlines()[0]}") from None


def gpu_config(cfg: BenchConfig) -> BenchConfig:
    """GPU shapes: GPT-2 small (124M parameters: vocabulary 50304 = GPT-2's 50257 padded to a
    multiple of 64, d 768, 12 layers, 12 heads, context 1024, batch 32); Transformer "base"
    (Vaswani et al.: d 512, 8 heads, d_ff 2048, 6+6 layers, a 32768-token joint vocabulary;
    source and target 128, batch 128); decoding at batch 32."""
    return dataclasses.replace(cfg, vocab_size=50304, d_model=768, n_heads=12, n_layers=12, d_ff=3072,
                               lm_seq_len=1024, lm_batch=32, s2s_vocab_size=32768, s2s_d_model=512,
                               s2s_n_heads=8, s2s_d_ff=2048, s2s_layers=6, s2s_src_len=128,
                               s2s_tgt_len=128, s2s_batch=128, decode_batch=32,
                               repeats=max(cfg.repeats, 10), warmup=5,
                               sections=cfg.sections if cfg.sections != CPU_SECTIONS else GPU_SECTIONS)


def tiny_config(**changes) -> BenchConfig:
    """Toy sizes that run in seconds (tests, smoke runs)."""
    base = dict(vocab_size=128, d_model=32, n_heads=4, n_layers=1, d_ff=64, lm_seq_len=16, lm_batch=2,
                s2s_layers=1, s2s_src_len=8, s2s_tgt_len=8, s2s_batch=2, decode_batch=2,
                decode_prompt=4, decode_new=4, beam=2, warmup=1, repeats=2, decode_repeats=2)
    return BenchConfig(**{**base, **changes})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    parser.add_argument("--sections", default=None,
                        help=f"comma-separated subset of: {', '.join(SECTIONS)} (default: all but "
                             f"'train-encoder', 'moe' and 'sweep', which run when named; 'positions' only on a GPU)")
    parser.add_argument("--presets", default="gpt2,llama,alibi,vaswani", help="LM presets to train")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per comparison")
    parser.add_argument("--compile", action="store_true", help="add rows with our model under torch.compile")
    parser.add_argument("--quick", action="store_true", help="toy sizes (seconds; checks the pipeline only)")
    parser.add_argument("--out", default="reports/perf", help="report folder ('' = do not write)")
    parser.add_argument("--note", action="append", default=[], help="a note for the report (repeatable)")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="measure nothing: combine the JSON results of bench runs made in parts "
                             "(e.g. one section per process) into one report; with one file, write "
                             "its report again with the --note notes added")
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value",
                        help="any BenchConfig field, e.g. lm_batch=16 d_model=512")
