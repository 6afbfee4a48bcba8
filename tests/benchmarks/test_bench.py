"""The bench runs end to end at toy sizes and produces well-formed rows and reports.

Correctness only: no test here asserts anything about speed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks import models as M
from benchmarks.breakdown import KINDS, sublayer_breakdown
from benchmarks.config import BenchConfig, tiny_config
from benchmarks.measure import Contender, peak_bytes, summary, time_interleaved
from benchmarks.report import check_gpu_targets, check_targets, write_report
from benchmarks.run import run_bench
from benchmarks.suites import ours_loss, training_unit

ROW_KEYS = {"section", "model", "impl", "ours", "tokens_per_s", "min", "max", "q1", "q3", "repeats",
            "mfu", "peak_mem_mb", "ratio", "reference", "settings", "note", "profile"}


def test_interleaving_times_every_contender_each_round():
    calls = []
    contenders = [Contender(name, lambda name=name: calls.append(name), tokens=10, flops=1.0) for name in "abc"]
    time_interleaved(contenders, torch.device("cpu"), warmup=1, repeats=3)
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # rotating start
    assert all(len(c.times) == 3 for c in contenders)


def test_summary_median_and_spread():
    s = summary([1.0, 2.0, 4.0], per_unit=8)
    assert s["median"] == 4 and s["min"] == 2 and s["max"] == 8 and s["q1"] <= s["median"] <= s["q3"]


def test_peak_bytes_counts_live_tensors():
    def unit():
        a = torch.ones(1 << 20)  # 4 MiB
        b = a * 2  # 8 MiB live at once
        del a, b

    peak = peak_bytes(unit, torch.device("cpu"), persistent=100)
    assert peak is None or 8 * 2**20 + 100 <= peak < 9 * 2**20


def test_config_overrides_and_errors():
    cfg = BenchConfig().override(["lm_batch=3", "compile=true", "presets=gpt2,llama", "dropout=0.1"])
    assert (cfg.lm_batch, cfg.compile, cfg.presets, cfg.dropout) == (3, True, ("gpt2", "llama"), 0.1)
    with pytest.raises(ValueError, match="keys"):
        BenchConfig().override(["no_such_key=1"])
    with pytest.raises(ValueError, match="preset"):
        BenchConfig(presets=("gpt5",))
    with pytest.raises(ValueError, match="section"):
        BenchConfig(sections=("everything",))


@pytest.mark.parametrize("preset", list(M.PRESETS))
def test_presets_build_with_the_bench_dimensions(preset):
    cfg = M.preset_config(preset, kind="lm", **tiny_config().dims())
    assert cfg.d_model == 32 and M.ffn_width(cfg) > 0


def test_breakdown_parts_and_step_are_positive():
    cfg = M.preset_config("llama", kind="lm", **tiny_config().dims())
    model = M.ours(cfg).train()
    data = torch.randint(1, cfg.vocab_size, (2, 9))
    inputs, targets = (data[:, :-1],), data[:, 1:]
    unit, optimizer = training_unit(model, lambda: ours_loss(model, model.hidden(*inputs), targets),
                                    torch.device("cpu"))
    unit()
    parts = sublayer_breakdown(model, inputs, lambda h: ours_loss(model, h, targets), unit, optimizer,
                               torch.device("cpu"), repeats=1)
    assert set(parts) == set(KINDS) | {"step", "other"}
    assert parts["step"] > 0 and all(parts[k] > 0 for k in ("embedding", "attention", "ffn", "norms",
                                                              "head + loss", "optimizer"))
    assert parts["cross-attention"] == 0


@pytest.mark.slow
def test_tiny_bench_end_to_end(tmp_path):
    cfg = tiny_config(device="cpu", threads=1, presets=("gpt2", "alibi"), out=str(tmp_path))
    result = run_bench(cfg, command="test", log=lambda s: None)
    rows = result["rows"]
    sections = {r["section"] for r in rows}
    assert sections == {"train-lm", "train-seq2seq", "loss", "decode"}
    for r in rows:
        assert set(r) == ROW_KEYS
        for key in ("tokens_per_s", "min", "max", "q1", "q3", "mfu"):
            assert r[key] is not None and math.isfinite(r[key]) and r[key] > 0, (r["impl"], key)
        assert r["min"] <= r["tokens_per_s"] <= r["max"]
        assert r["repeats"] >= 2
    ours = [r for r in rows if r["ours"]]
    assert {r["model"] for r in ours if r["section"] == "train-lm"} == {"gpt2-style", "alibi (bloom-style)"}
    if M.available("x-transformers") and M.available("transformers"):
        impls = {r["impl"] for r in rows}
        assert {"x-transformers", "transformers (GPT2)", "torch.nn.Transformer", "transformers generate"} <= impls
        assert all(r["ratio"] > 0 for r in rows)
    gqa = {r["impl"]: r for r in rows if r["model"] == "llama-style LM, greedy: key/value heads"}
    assert set(gqa) == {"ablate mha", "ablate gqa, 1 key/value head", "ablate gqa, 2 key/value heads"}
    assert all(r["ours"] and r["reference"] == "ablate mha" for r in gqa.values())
    cache_mb = {impl: float(r["note"].split()[2]) for impl, r in gqa.items()}  # "KV cache X MB (...)"
    assert cache_mb["ablate gqa, 1 key/value head"] * 4 == pytest.approx(cache_mb["ablate mha"], rel=0.01)
    assert set(result["breakdown"]) == {"gpt2-style", "alibi (bloom-style)", "vaswani enc-dec"}
    assert result["targets"] == check_targets(rows) and result["targets"]
    for r in rows:  # ours and each reference are profiled
        assert (r["profile"] is not None) == (r["ours"] or r["impl"] == r["reference"]), r["impl"]
        if r["profile"]:
            p = r["profile"]
            assert p["total_ms"] > 0 and 0 <= p["matmul_ms"] <= p["total_ms"] and p["top"]
            assert p["matmul_ms"] + p["attention_ms"] + p["other_ms"] == pytest.approx(p["total_ms"])
    path = write_report(result, tmp_path)
    text = path.read_text()
    assert "No GPU table was measured" in text and "| section | model |" in text
    assert "## Operator profiles" in text
    assert json.loads(path.with_suffix(".json").read_text())["rows"] == json.loads(json.dumps(rows))
    assert (tmp_path / "README.md").read_text().count(f"]({path.name})") == 1


def test_parts_merge_into_one_report(tmp_path):
    """A bench made in parts (one section per process) combines into one report; a later part's
    rows of a model replace an earlier part's."""
    from benchmarks.run import merge_results

    base = dict(device="cpu", threads=1, out="")
    first = run_bench(tiny_config(**base, sections=("positions", "train-seq2seq")), command="one", log=lambda s: None)
    second = run_bench(tiny_config(**base, sections=("train-seq2seq",)), command="two", log=lambda s: None)
    merged = merge_results([first, second], notes=("measured in two parts",))
    assert [p["command"] for p in merged["env"]["parts"]] == ["one", "two"]
    seq2seq = [r for r in merged["rows"] if r["section"] == "train-seq2seq"]
    assert seq2seq == [r for r in second["rows"]]  # replaced, not doubled
    assert [r for r in merged["rows"] if r["section"] == "positions"] == \
        [r for r in first["rows"] if r["section"] == "positions"]
    assert merged["rows"][0]["section"] == "train-seq2seq"  # sections in the bench's order
    assert merged["targets"] == check_targets(merged["rows"])
    assert "measured in two parts" in merged["notes"]
    text = write_report(merged, tmp_path).read_text()
    assert "Measured in 2 parts" in text and "`one`" in text and "`two`" in text
    again = merge_results([first], notes=("a note added later",))  # one run: re-rendered with notes
    assert again["rows"] == first["rows"] and "parts" not in again["env"]
    assert again["notes"] == first["notes"] + ["a note added later"]


@pytest.mark.slow
def test_the_loss_section_times_our_chunks_eager_and_compiled_against_full_logits():
    cfg = tiny_config(device="cpu", threads=1, out="", sections=("loss",))
    rows = run_bench(cfg, command="t", log=lambda s: None)["rows"]
    assert [(r["impl"], r["ours"]) for r in rows] == [("ablate, chunks, eager", True),
                                                      ("ablate, chunks, compiled region", True),
                                                      ("full logits + F.cross_entropy", False)]
    assert all(r["reference"] == "full logits + F.cross_entropy" for r in rows) and rows[2]["ratio"] == 1.0
    for r in rows:
        assert r["tokens_per_s"] > 0 and r["mfu"] > 0 and r["peak_mem_mb"] > 0, r["impl"]
    assert check_targets(rows) == [] and check_targets(rows, "cuda") == []  # measured, no goal set


def test_positions_rows_compare_with_rope_and_gpu_targets():
    cfg = tiny_config(device="cpu", threads=1, out="", sections=("positions",))
    rows = run_bench(cfg, command="t", log=lambda s: None)["rows"]
    assert [r["impl"] for r in rows] == ["ablate, rope", "ablate, learned", "ablate, alibi"]
    assert rows[0]["ratio"] == 1.0 and all(r["reference"] == "ablate, rope" for r in rows)
    checks = check_targets(rows, "cuda")
    assert [c["met"] for c in checks] == [rows[2]["ratio"] >= 0.85]


def test_moe_rows_compare_iso_flop_experts_with_dense():
    """The moe section: dense SwiGLU and the mixtures, at equal active FLOPs per token (so their
    MFU and tokens/s ratios compare like with like), total and active parameters in the notes."""
    cfg = tiny_config(device="cpu", threads=1, out="", sections=("moe",))
    rows = run_bench(cfg, command="t", log=lambda s: None)["rows"]
    assert [r["impl"] for r in rows] == ["ablate dense (swiglu)", "ablate moe, 4 experts top-2",
                                         "ablate moe, 8 experts top-2"]
    assert rows[0]["ratio"] == 1.0 and all(r["reference"] == "ablate dense (swiglu)" and r["ours"] for r in rows)
    assert "active" not in rows[0]["note"] and all("active" in r["note"] for r in rows[1:])
    flops_per_token = [r["mfu"] * cfg_peak / r["tokens_per_s"] for r in rows for cfg_peak in [1.0]]
    assert max(flops_per_token) / min(flops_per_token) < 1.05  # iso-FLOP within the router's share


def test_the_encoder_section_times_our_bert_style_encoder_against_bert_for_masked_lm():
    """The train-encoder section: our bert preset and BertForMaskedLM at the same size (the same
    parameter count), at the same FLOPs per token; the peer is the reference."""
    pytest.importorskip("transformers")
    cfg = tiny_config(device="cpu", threads=1, out="", sections=("train-encoder",))
    rows = run_bench(cfg, command="t", log=lambda s: None)["rows"]
    assert [r["impl"] for r in rows] == ["ablate", "transformers (BertForMaskedLM)"]
    assert rows[1]["ratio"] == 1.0 and rows[0]["ratio"] > 0 and rows[0]["reference"] == rows[1]["impl"]
    mcfg = M.preset_config("bert", kind="encoder", **cfg.dims())
    ours, theirs = M.ours(mcfg), M.hf_bert(mcfg)
    # the FLOPs both rows use (ours, counted by FlopCounter) are the peer's own, counted here from its modules
    from variants.flops import FlopCounter

    linear = sum(m.weight.numel() for m in theirs.modules() if isinstance(m, torch.nn.Linear))
    T = cfg.lm_seq_len
    assert FlopCounter(ours)(tokens=1, seq_len=T) == 6 * linear + 12 * mcfg.n_layers * mcfg.d_model * T
    token_types = theirs.config.type_vocab_size * mcfg.d_model  # held at type 0 by ours (folded into positions)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters()) - token_types


def test_a_contender_out_of_memory_is_reported_not_fatal():
    from benchmarks.suites import _rows

    def boom():
        raise torch.OutOfMemoryError("CUDA out of memory")

    contenders = [Contender("fits", lambda: None, tokens=10, flops=1.0, ours=True),
                  Contender("too big", boom, tokens=10, flops=1.0)]
    time_interleaved(contenders, torch.device("cpu"), warmup=1, repeats=2)
    assert contenders[1].failed and not contenders[1].times and len(contenders[0].times) == 2
    rows = _rows("train-lm", "m", contenders, None, peak=1.0, settings="")
    assert rows[1]["impl"] == "too big" and rows[1]["tokens_per_s"] is None and "memory" in rows[1]["note"]
    assert rows[0]["ratio"] is None  # no peer left to compare with
    check_targets(rows)  # rows without numbers are skipped


def test_other_work_excludes_this_process():
    from benchmarks.measure import cpu_seconds, other_work

    # two cores busy for 2 s, 3 CPU-seconds of them ours: other work kept half a core busy
    assert other_work((0.0, 10.0, 5.0), (2.0, 14.0, 8.0)) == pytest.approx(0.5)
    assert other_work((0.0, 10.0, 5.0), (2.0, 12.0, 8.0)) == 0.0  # tick rounding never goes negative
    assert other_work((2.0, 1.0, 1.0), (1.0, 2.0, 2.0)) is None
    start = cpu_seconds()
    if start is None:
        pytest.skip("no /proc/stat")
    end = start
    while end[2] - start[2] < 0.4 and end[0] - start[0] < 30:  # keep a core busy in this process
        sum(range(10_000))  # (until it has had 0.4 s of CPU: on a loaded machine that takes longer)
        end = cpu_seconds()
    assert end[2] - start[2] >= 0.4  # counted as this process's time
    assert end[1] - start[1] >= (end[2] - start[2]) - 0.1  # and within the machine's busy time


@pytest.mark.slow
@pytest.mark.skipif(not M.available("transformers"), reason="needs transformers for a peer")
def test_with_compile_every_contender_of_a_compiled_table_is_compiled(tmp_path):
    """--compile adds one table per model in which ours and the peers are all compiled, so that
    its ratios compare like with like; the eager tables stay as they were."""
    cfg = tiny_config(device="cpu", threads=1, presets=("gpt2",), sections=("train-lm", "train-seq2seq"),
                      compile=True, out=str(tmp_path))
    rows = run_bench(cfg, command="test", log=lambda s: None)["rows"]
    tables = {(r["section"], r["model"]) for r in rows}
    assert tables == {("train-lm", "gpt2-style"), ("train-lm", "gpt2-style, torch.compile"),
                      ("train-seq2seq", "vaswani enc-dec"), ("train-seq2seq", "vaswani enc-dec, torch.compile")}
    for r in rows:
        compiled = r["model"].endswith(", torch.compile")
        assert r["impl"].endswith(" + torch.compile") == compiled, r["impl"]
        assert r["reference"].endswith(" + torch.compile") == compiled, (r["model"], r["reference"])
        assert r["tokens_per_s"] > 0 and r["ratio"] > 0
    assert sum(not r["ours"] for r in rows if r["model"] == "gpt2-style, torch.compile") >= 1


@pytest.mark.slow
def test_the_sweep_section_times_whole_sweeps_at_each_k(tmp_path):
    """Real `ablate sweep` invocations (on CPU: --workers K), every run checked completed, the
    tokens read back from the runs; ratios against one run at a time."""
    from benchmarks.sweep import sweep_throughput

    cfg = tiny_config(sweep_runs=2, sweep_steps=6, sweep_ks=(1, 2), sweep_repeats=1,
                      sweep_set=("model.n_layers=1", "model.d_model=64", "data.limit_train=300",
                                 "data.limit_eval=20", "data.batch_size=4"))
    rows = sweep_throughput(cfg, torch.device("cpu"), 1e11, log=lambda s: None)
    assert [r["impl"] for r in rows] == ["K=1", "K=2"] and all(set(r) == ROW_KEYS for r in rows)
    assert rows[0]["ratio"] == 1.0 and rows[1]["ratio"] > 0 and rows[1]["reference"] == "K=1"
    assert all(r["tokens_per_s"] > 0 and r["repeats"] == 1 and r["section"] == "sweep" for r in rows)
    assert rows[0]["model"] == "2 × lm-bible LM, 6 steps each"
    gpu_checks = check_gpu_targets(rows)
    assert len(gpu_checks) == 1 and gpu_checks[0]["target"].startswith("sweep ")


@pytest.mark.slow
def test_the_gpu_check_script_runs_its_parts_and_merges_them(tmp_path):
    """benchmarks/gpu_check.sh at toy sizes (QUICK=1): each bench part in its folder, then one
    merged report; an unknown part is refused before anything runs."""
    import os
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"
    env = {**os.environ, "PYTHON": sys.executable, "QUICK": "1", "MERGE_OUT": str(tmp_path / "merged")}
    bad = subprocess.run(["bash", str(script), str(tmp_path), "loss", "everything"], env=env,
                         capture_output=True, text=True, cwd=script.parents[1])
    assert bad.returncode == 2 and "unknown part 'everything'" in bad.stderr
    assert not (tmp_path / "loss").exists()
    done = subprocess.run(["bash", str(script), str(tmp_path), "loss", "sweep", "merge"], env=env,
                          capture_output=True, text=True, cwd=script.parents[1])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "== gpu_check loss" in done.stdout and (tmp_path / "loss" / "log.txt").stat().st_size > 0
    merged = json.loads(next((tmp_path / "merged").glob("*.json")).read_text())
    assert {r["section"] for r in merged["rows"]} == {"loss", "sweep"}
    assert len(merged["env"]["parts"]) == 2
