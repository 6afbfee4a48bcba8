"""Read what a W&B run wrote to disk: the ``run-<id>.wandb`` transaction log that the W&B client
keeps in ``<run dir>/wandb/{offline-,}run-<time>-<id>/`` (offline and online runs alike).

The file is a LevelDB-style log of ``wandb_internal_pb2.Record`` messages: a 7-byte header
(``:W&B``, magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each with a CRC-32 (seeded
with the chunk type), a length and a type (full, first, middle, last). A chunk whose checksum
fails or that runs past the end of the file (a process killed mid-write) ends the reading.

Used to check what W&B holds against the run directory (tests, and resume: the steps a killed
segment already sent are not sent again).
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

_HEADER = struct.Struct("<4sHB")
_CHUNK = struct.Struct("<IHB")
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


class RecordsError(ValueError):
    """Not a W&B transaction log."""


def read_records(path: str | Path) -> Iterator[Any]:
    """The ``Record`` protobufs of one ``.wandb`` file, in order; stops at a torn or corrupt end."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if len(data) < _HEADER.size:
        raise RecordsError(f"{path}: too short for a W&B log")
    ident, magic, version = _HEADER.unpack_from(data)
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise RecordsError(f"{path}: not a W&B transaction log (header {ident!r} {magic:#x} {version})")
    pos, parts = _HEADER.size, []
    while pos + _CHUNK.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK.size:  # block trailer: zero padding
            pos += left
            continue
        crc, length, kind = _CHUNK.unpack_from(data, pos)
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + _CHUNK.size: pos + _CHUNK.size + length]
        if len(chunk) < length or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            return
        pos += _CHUNK.size + length
        if kind in (_FULL, _FIRST):
            parts = [chunk]
        else:
            parts.append(chunk)
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(b"".join(parts))
            yield record
            parts = []


def _key(item: Any) -> str:
    return item.key or ".".join(item.nested_key)


@dataclass
class WandbRunRecords:
    """What one W&B run segment holds, decoded."""

    path: Path
    run_id: str = ""
    project: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # define_metric: name -> settings
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # name, type, files
    exit_code: Optional[int] = None  # None: the segment never finished (killed)

    @property
    def files_dir(self) -> Path:
        return self.path.parent / "files"

    def table(self, key: str) -> dict[str, Any]:
        """A logged ``wandb.Table`` as ``{"columns": [...], "data": [[...], ...]}``."""
        entry = self.summary.get(key)
        if not isinstance(entry, dict) or "path" not in entry:
            raise KeyError(f"{self.path}: no table {key!r} in the summary")
        return json.loads((self.files_dir / entry["path"]).read_text())


def read_run(path: str | Path, wait_s: float = 0.0) -> WandbRunRecords:
    """Decode a ``.wandb`` file (or the run folder holding one). ``wait_s``: how long to wait
    for the exit record of a run that has just finished (W&B's service writes the file's end
    after ``finish`` returns)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.wandb"))
        if not found:
            raise RecordsError(f"{path}: no .wandb file")
        path = found[0]
    deadline = time.monotonic() + wait_s
    while True:
        out = _decode(path)
        if out.exit_code is not None or time.monotonic() >= deadline:
            return out
        time.sleep(0.2)


def _decode(path: Path) -> WandbRunRecords:
    out = WandbRunRecords(path)
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            out.run_id, out.project, out.name = run.run_id, run.project, run.display_name
            out.group, out.job_type, out.tags = run.run_group, run.job_type, list(run.tags)
            out.config.update({_key(i): json.loads(i.value_json) for i in run.config.update})
        elif kind == "config":
            out.config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set(row, list(item.nested_key) or [item.key], json.loads(item.value_json))
            out.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                _set(out.summary, list(item.nested_key) or [item.key], json.loads(item.value_json))
            for item in record.summary.remove:
                out.summary.pop(_key(item), None)
        elif kind == "metric":
            m = record.metric
            out.metrics[m.name or m.glob_name] = {"step_metric": m.step_metric,
                                   "summary": [k for k in ("min", "max", "mean", "last", "best")
                                               if getattr(m.summary, k, False)]}
        elif kind == "artifact":
            a = record.artifact
            out.artifacts.append({"name": a.name, "type": a.type, "aliases": list(a.aliases),
                                  "files": [e.path for e in a.manifest.contents]})
        elif kind == "exit":
            out.exit_code = record.exit.exit_code
    return out


def _set(tree: dict, keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value


def run_segments(run_dir: str | Path, wandb_id: str, wait_s: float = 0.0) -> list[WandbRunRecords]:
    """Every segment (start and resumes) of W&B run ``wandb_id`` kept under ``run_dir/wandb``,
    oldest first (``wait_s``: see :func:`read_run`, for the newest)."""
    folders = [f for f in sorted(Path(run_dir, "wandb").glob(f"*run-*-{wandb_id}")) if any(f.glob("*.wandb"))]
    return [read_run(f, wait_s if i == len(folders) - 1 else 0.0) for i, f in enumerate(folders)]


def sent_metrics(segments: list[WandbRunRecords], step_key: str = "trainer/global_step") -> set[tuple[int, str]]:
    """The (``step_key`` value, metric key) pairs the segments sent to W&B: a resumed run sends
    only the others."""
    return {(int(row[step_key]), key) for segment in segments for row in segment.history if step_key in row
            for key in row if not key.startswith("_") and key != step_key}
