"""GPU peaks by exact model: the device names CUDA reports map to the right datasheet peak, and
an unknown GPU has no peak rather than a neighbour's."""

import pytest

from tools.system import GPU_PEAKS, gpu_model


@pytest.mark.parametrize("name, model", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"),
    ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200 SXM"),
    ("NVIDIA H200 NVL", "H200 NVL"),
    ("NVIDIA B200", "B200"),
    ("NVIDIA A100-SXM4-40GB", "A100"),
    ("NVIDIA A100 80GB PCIe", "A100"),
    ("NVIDIA L4", "L4"),
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA L40", "L40"),
    ("NVIDIA A10", "A10"),
    ("Tesla V100-SXM2-16GB", "V100"),
    ("Tesla T4", "T4"),
])
def test_gpu_names_map_to_their_exact_model(name, model):
    assert gpu_model(name)[0] == model


@pytest.mark.parametrize("name", ["NVIDIA A10G", "NVIDIA GeForce RTX 4090", "NVIDIA A40", "NVIDIA H800"])
def test_unknown_gpus_have_no_peak(name):
    assert gpu_model(name) is None


def test_substring_neighbours_get_their_own_peaks():
    assert gpu_model("NVIDIA L40S")[1]["bf16"] > 2.5 * gpu_model("NVIDIA L4")[1]["bf16"]  # not the L4 peak
    assert gpu_model("NVIDIA H100 PCIe")[1]["bf16"] < gpu_model("NVIDIA H100 80GB HBM3")[1]["bf16"]
    assert len({m for m, _, _ in GPU_PEAKS}) == len(GPU_PEAKS)
