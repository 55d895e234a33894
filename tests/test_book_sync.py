"""Code the book shows from the package is the package's code.

A chapter may show a function by a code cell whose first line is
``# pnpbook: shown from MODULE.NAME`` and whose remaining lines are the
source of that object.  This test finds every such cell in every notebook
under ``book/`` and checks that the rest of the cell equals
``inspect.getsource`` of the object (trailing whitespace stripped from each
line and from the end).
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import json
import re
from pathlib import Path

import pytest

BOOK = Path(__file__).resolve().parent.parent / "book"
MARKER = re.compile(r"^# pnpbook: shown from ([A-Za-z_][\w.]*)\s*$")


def _normalise(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.splitlines()).rstrip()


def resolve(dotted: str) -> object:
    """The object named by ``dotted``: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(f"no module in {dotted!r}")


def shown_cells(book: Path = BOOK) -> list[tuple[str, int, str, str]]:
    """``(notebook, cell index, dotted name, shown code)`` for every marked code cell under ``book``."""
    found = []
    for nb_path in sorted(book.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in nb_path.parts or "_build" in nb_path.parts:
            continue
        cells = json.loads(nb_path.read_text(encoding="utf-8"))["cells"]
        for i, cell in enumerate(cells):
            if cell["cell_type"] != "code":
                continue
            source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            first, _, rest = source.partition("\n")
            match = MARKER.match(first)
            if match:
                found.append((str(nb_path.relative_to(book.parent)), i, match.group(1), rest))
    return found


def mismatch(dotted: str, shown: str) -> str | None:
    """None when ``shown`` is the source of ``dotted``; otherwise a unified diff."""
    expected = _normalise(inspect.getsource(resolve(dotted)))
    got = _normalise(shown)
    if got == expected:
        return None
    return "\n".join(difflib.unified_diff(expected.splitlines(), got.splitlines(),
                                          f"{dotted} (package)", "notebook cell", lineterm=""))


CELLS = shown_cells()


def test_the_book_shows_package_code():
    assert any(nb.endswith("02_synthesizers.ipynb") for nb, *_ in CELLS), \
        "chapter 2 shows the synthesizers' code in marked cells"


@pytest.mark.parametrize("notebook, index, dotted, shown", CELLS,
                         ids=[f"{nb}:{i}:{name}" for nb, i, name, _ in CELLS])
def test_shown_code_matches_package(notebook, index, dotted, shown):
    diff = mismatch(dotted, shown)
    assert diff is None, f"{notebook} cell {index} shows stale code of {dotted}:\n{diff}"


def test_mismatch_detects_an_edit():
    source = inspect.getsource(resolve("pnpbook.synth.amchirp"))
    assert mismatch("pnpbook.synth.amchirp", source + "  \n\n") is None
    assert mismatch("pnpbook.synth.amchirp", source.replace("0.2 / gamma", "0.3 / gamma")) is not None
    assert mismatch("pnpbook.synth.amchirp", source.replace("    ", "  ", 1)) is not None


def test_marker_parsing(tmp_path):
    cell = {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
            "source": ["# pnpbook: shown from pnpbook.synth.ftm_time\n", "def f(): pass\n"]}
    other = {**cell, "source": "# not a marker\nx = 1"}
    (tmp_path / "nb.ipynb").write_text(json.dumps({"cells": [other, cell]}), encoding="utf-8")
    assert shown_cells(tmp_path) == [(f"{tmp_path.name}/nb.ipynb", 1, "pnpbook.synth.ftm_time", "def f(): pass\n")]
    assert resolve("pnpbook.synth.Synth.at") is inspect.getattr_static(resolve("pnpbook.synth.Synth"), "at")
