"""docs/architecture.md and the README's layout name files that exist, and every package the
layer contracts cover: the map a newcomer reads matches the tree."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "docs" / "architecture.md", ROOT / "README.md"]


def _paths(text: str) -> set[str]:
    """Every `path/to/file.py`, `folder/` or `docs/x.md` the text names in backticks."""
    names = set()
    for code in re.findall(r"`([^`\s]+)`", text):
        if re.fullmatch(r"[a-z_]+(/[\w.<>-]+)*(\.py|\.md|/)", code) and "<" not in code:
            names.add(code)
    return names


def test_every_file_the_architecture_names_exists():
    missing = sorted(p for p in _paths(DOCS[0].read_text()) if not (ROOT / p).exists())
    assert not missing, "architecture.md names files that are not in the tree: %s" % missing


def test_every_folder_and_file_of_the_readme_layout_exists():
    """The README names top-level folders, and files inside them relative to their bullet."""
    text = DOCS[1].read_text()
    layout = text.split("The layout:", 1)[1].split("## ", 1)[0]
    bullets = re.findall(r"^- \*\*([a-z_]+/)\*\*(.*?)(?=^- \*\*|\Z)", layout, re.M | re.S)
    assert len(bullets) >= 9
    missing = [folder for folder, _ in bullets if not (ROOT / folder).is_dir()]
    for folder, body in bullets:
        missing += [name for name in _paths(body)
                    if not (ROOT / name).exists() and not (ROOT / folder / name).exists()]
    assert not missing, "README's layout names what is not in the tree: %s" % missing


def test_the_map_shows_every_package_the_layer_contracts_cover():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    text = DOCS[0].read_text()
    diagram = text.split("```", 2)[1]
    shown = set(re.findall(r"\b([a-z_]+)/", diagram))
    assert set(config["root_packages"]) <= shown
