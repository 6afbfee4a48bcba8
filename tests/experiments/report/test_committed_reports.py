"""Every committed report rebuilds from its own folder (sweep.yaml, report.json's overrides and
the run copies in runs/): the page and report.json byte for byte, the plots to the same images
sizes (PNG bytes depend on the matplotlib and freetype builds)."""

import shutil
import struct
from pathlib import Path

import pytest

from experiments.report.page import rebuild

ROOT = Path(__file__).resolve().parents[3]
REPORTS = sorted(p.parent for p in (ROOT / "reports").glob("*/report.json") if (p.parent / "sweep.yaml").is_file())


def _png_size(path: Path) -> tuple[int, int]:
    return struct.unpack(">II", path.read_bytes()[16:24])


def test_there_are_committed_reports():
    assert len(REPORTS) >= 3


@pytest.mark.parametrize("folder", REPORTS, ids=[p.name for p in REPORTS])
def test_committed_report_rebuilds_from_its_folder(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the sweep file names its base configs relative to the project
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    for png in copy.glob("*.png"):
        png.unlink()
    rebuild(copy)
    before = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    after = sorted(p.relative_to(copy) for p in copy.rglob("*") if p.is_file())
    assert after == before
    for name in before:
        if name.suffix == ".png":
            assert _png_size(copy / name) == _png_size(folder / name), name
        else:
            assert (copy / name).read_bytes() == (folder / name).read_bytes(), name
