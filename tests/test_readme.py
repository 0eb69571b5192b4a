# SPDX-License-Identifier: Apache-2.0
"""The README's Python examples and ``examples/`` run as written, on the default device."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_has_examples():
    assert len(_readme_blocks()) >= 4


def test_readme_python_blocks_run_in_order(queue, tmp_path, monkeypatch):
    # One namespace, as a reader pasting them into one session would have.
    monkeypatch.chdir(tmp_path)  # the export example saves a file
    namespace: dict = {}
    for i, block in enumerate(_readme_blocks()):
        try:
            exec(compile(block, f"README.md python block {i}", "exec"), namespace)
        except Exception as e:  # pragma: no cover - the message is the point
            pytest.fail(f"README python block {i} failed: {type(e).__name__}: {e}\n{block}")


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "examples").glob("*.py")))
def test_example_runs(queue, script, capsys):
    runpy.run_path(str(ROOT / "examples" / script), run_name="__main__")
    assert capsys.readouterr().out  # each example reports what it did
