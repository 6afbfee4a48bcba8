"""README and docs/ name only things that exist: every relative link resolves, every repository
path in backticks exists, every config file named parses, and every `ablate` command is one the
CLI has."""

import re
from pathlib import Path

import pytest

from experiments.cli import main
from experiments.run.config import load_config
from experiments.sweep.spec import load_sweep

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP = ("configs", "reports", "experiments", "variants", "tools", "lit", "benchmarks", "tests", "docs")


def _ids(pages):
    return [str(p.relative_to(ROOT)) for p in pages]


def test_readme_is_the_front_door():
    assert (ROOT / "README.md").stat().st_size <= 10 * 1024
    assert len(PAGES) > 3


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_links_resolve(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if target.startswith(("http://", "https://", "#", "mailto:")):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.name}: link to {target} does not exist"


def _repo_paths(text):
    """Backticked tokens that name a file or folder of the repository (no placeholders)."""
    for token in re.findall(r"`([^`\s]+)`", text):
        token = token.rstrip(",.;:")
        if token.startswith(TOP) and "/" in token and not re.search(r"[<>*{}…$]", token):
            yield token


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_named_paths_exist_and_configs_parse(page):
    for token in _repo_paths(page.read_text()):
        path = ROOT / token.split(":")[0]
        assert path.exists(), f"{page.name}: `{token}` does not exist"
        if path.suffix == ".yaml" and path.parent.name == "sweeps":
            load_sweep(path, ["run.root=/nonexistent"])
        elif path.suffix == ".yaml" and path.parts[-3] == "configs":
            load_config([path])


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_ablate_commands_exist(page, capsys):
    commands = set(re.findall(r"(?:^|`|\s)ablate ([a-z][a-z-]*)", page.read_text(), flags=re.M))
    assert commands or page.name != "README.md"
    for command in commands:
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0, f"{page.name}: `ablate {command}` is not a command"
    capsys.readouterr()


def test_version_and_plain_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("ablate 0.")
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "``" not in capsys.readouterr().out  # no reStructuredText markup in the help


def _component_rows(page: Path) -> dict[str, list[set[str]]]:
    """Slot -> the backticked words of each later cell of the slot's row in the page's table."""
    from variants import REGISTRIES

    rows = {}
    for line in page.read_text().splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if cells and re.fullmatch(r"`[a-z_]+`", cells[0]) and cells[0].strip("`") in REGISTRIES:
            rows[cells[0].strip("`")] = [set(re.findall(r"`([a-z0-9_]+)`", c)) for c in cells[1:]]
    return rows


@pytest.mark.parametrize("page", ["README.md", "docs/components.md"])
def test_the_component_tables_list_every_registered_entry_and_setting(page):
    """README's table names every entry; docs/components.md also every entry's settings (third
    column). Nothing else a table names in backticks may be missing from the registries."""
    from variants import REGISTRIES, ModelConfig

    rows = _component_rows(ROOT / page)
    assert set(rows) == set(REGISTRIES), f"{page}: slots {sorted(set(REGISTRIES) ^ set(rows))}"
    fields = set(ModelConfig.__dataclass_fields__)
    for slot, cells in rows.items():
        names, options = set(REGISTRIES[slot].names()), set(REGISTRIES[slot].options())
        assert names <= cells[0], f"{page}: {slot} row lacks {sorted(names - cells[0])}"
        unknown = cells[0] - names - options - fields
        assert not unknown, f"{page}: {slot} row names {sorted(unknown)}, which are not registered"
        if page == "docs/components.md":
            assert options <= cells[1], f"{page}: {slot} settings lack {sorted(options - cells[1])}"
