"""The one module that says what a result ran on."""

import re

import torch

from tools import system

TWO_CORES_FOUR_THREADS = "\n\n".join(
    f"processor\t: {i}\nmodel name\t: Test CPU 9000\nphysical id\t: 0\ncore id\t\t: {i // 2}\n"
    f"flags\t\t: fpu sse avx2 fma" for i in range(4))


def test_cpuinfo_blocks_and_physical_cores():
    procs = system.parse_cpuinfo(TWO_CORES_FOUR_THREADS)
    assert len(procs) == 4 and procs[3]["model name"] == "Test CPU 9000"
    assert system.physical_cores(procs) == 2  # hyper-threads not counted


def test_this_machine_is_described():
    assert system.cpu_model() and system.physical_cores() >= 1
    env = system.environment()
    assert set(env) == {"code", "versions", "machine"}
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|unknown", env["code"])
    assert env["versions"]["torch"] == torch.__version__
    assert f"{torch.get_num_threads()} torch threads" in env["machine"]


def test_the_matmul_peak_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    assert system.matmul_peak(size=64, seconds=0.05) > 0
    assert torch.equal(torch.rand(3), expected)


def test_the_cpu_peak_is_measured_once_per_machine(tmp_path):
    first = system.cpu_peak_flops(tmp_path)
    assert first > 0 and (tmp_path / "cpu_peak.json").is_file()
    assert system.cpu_peak_flops(tmp_path) == first  # read back, not measured again
