"""The committed chapters: executed in order, with outputs, ready for nbval and the site.

nbval silently skips cells stored unexecuted, so this checks what nbval cannot.
"""
import json
import re
from pathlib import Path

import pytest
import yaml

import pnpbook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
MAX_BYTES = 2_000_000  # per chapter: figures and audio are committed in every clone
COLAB_CELL = ('# Colab: install pnpbook at this book\'s release (does nothing elsewhere).\n'
              'import sys\n'
              'if "google.colab" in sys.modules:\n'
              f'    %pip install -q "pnpbook[book] @ git+https://github.com/pnpbook/pnpbook@v{pnpbook.__version__}"')


def cells(nb):
    return [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]


def test_there_are_chapters():
    assert len(NOTEBOOKS) >= 2


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_every_code_cell_executed_in_order_without_errors(nb):
    code = cells(nb)
    counts = [c["execution_count"] for c in code]
    assert None not in counts, f"{nb.name}: cells {[i for i, n in enumerate(counts) if n is None]} never executed"
    assert counts == list(range(1, len(counts) + 1)), f"{nb.name}: not run top to bottom in one kernel: {counts}"
    for i, c in enumerate(code):
        assert not any(o["output_type"] == "error" for o in c["outputs"]), f"{nb.name}: cell {i} stored an error"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_cell_first_and_pinned_to_this_release(nb):
    first = cells(nb)[0]
    assert "".join(first["source"]).strip() == COLAB_CELL
    assert "remove-cell" in first["metadata"].get("tags", [])


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_volatile_outputs_are_ignored_by_nbval(nb):
    """Audio players and progress bars differ byte for byte between runs: their cells must be ignored."""
    for c in cells(nb):
        source = "".join(c["source"])
        text = json.dumps(c["outputs"])
        volatile = "<audio" in text or "it/s]" in text or re.search(r"\d+(\.\d+)? ?(ms|s) (per|±)", text)
        if volatile:
            assert source.startswith("# NBVAL_IGNORE_OUTPUT"), f"{nb.name}: volatile output in {source[:80]!r}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_size_and_kernel(nb):
    assert nb.stat().st_size < MAX_BYTES, f"{nb.name} is {nb.stat().st_size} bytes"
    meta = json.loads(nb.read_text())["metadata"]
    assert meta["kernelspec"]["name"] == "python3"


def test_toc_lists_every_chapter_and_only_existing_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(node):
        for key in ("chapters", "sections", "parts"):
            for child in node.get(key, []):
                if "file" in child:
                    files.append(child["file"])
                walk(child)

    walk(toc)
    for f in files:
        assert any((ROOT / f"{f}{ext}").exists() for ext in ("", ".md", ".ipynb")), f
    listed = {str(Path(f).with_suffix("")) for f in files}
    for nb in NOTEBOOKS:
        assert str(nb.relative_to(ROOT).with_suffix("")) in listed, nb.name
