# SPDX-License-Identifier: Apache-2.0
"""The README's Python blocks each run on their own, and ``examples/`` run as written.

A reader may paste any one block into a new session, so each block runs alone in
a fresh namespace: one that leans on a name from an earlier block fails here.
Each block's first line names the extras it needs, e.g.
``# needs: pip install ".[pocl,onnx]"``; a block is skipped only when a module of
such an extra is missing, or, for the OpenCL extras, when no device works.
"""

from __future__ import annotations

import importlib.metadata
import re
import runpy
from pathlib import Path

import pytest

import atrous_cl

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

#: What each extra a block may name stands for here: the modules it imports.
EXTRA_MODULES = {
    "onnx": ("onnx", "onnxruntime"),
    "dask": ("dask.array", "distributed"),
    "plot": ("matplotlib",),
}
#: Extras that give an OpenCL device: any working device will do for the block.
DEVICE_EXTRAS = {"pocl", "intel"}
NEEDS = re.compile(r'# needs: pip install "\.\[([\w,-]+)\]"')


def readme_blocks(text: str) -> list[tuple[str, str]]:
    """``(section title, code)`` for every ```` ```python ```` block, in order."""
    blocks, section = [], "top"
    for part in re.split(r"(^```python\n.*?^```$)", text, flags=re.S | re.M):
        if part.startswith("```python\n"):
            blocks.append((section, part[len("```python\n"):-3]))
        else:
            titles = re.findall(r"^#+ (.+)$", part, flags=re.M)
            section = titles[-1] if titles else section
    return blocks


def needed_extras(code: str) -> list[str]:
    """The extras a block's first line names; a block without that line is an error."""
    found = NEEDS.match(code.splitlines()[0]) if code.strip() else None
    if not found:
        raise ValueError(f'a README block must start with `# needs: pip install ".[extras]"`, '
                         f"got {code.splitlines()[0] if code.strip() else 'an empty block'!r}")
    return found.group(1).split(",")


def run_alone(code: str, name: str) -> None:
    """Run one block in a namespace of its own, as a fresh interpreter session would."""
    exec(compile(code, name, "exec"), {"__name__": "__main__"})


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def test_readme_is_short_and_has_examples():
    assert README.stat().st_size < 12_000, f"README.md is {README.stat().st_size} bytes"
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)),
                         ids=[f"{i}-{title.split()[0].lower()}" for i, (title, _) in enumerate(BLOCKS)])
def test_readme_block_runs_alone(index, tmp_path, monkeypatch):
    title, code = BLOCKS[index]
    extras = needed_extras(code)
    provided = set(importlib.metadata.metadata("atrous-cl").get_all("Provides-Extra") or [])
    for extra in extras:
        assert extra in provided, f"block {index} ({title}) names extra {extra!r}, not in {provided}"
        assert extra in EXTRA_MODULES or extra in DEVICE_EXTRAS, \
            f"test_readme does not know what extra {extra!r} provides; add it to EXTRA_MODULES"
        for module in EXTRA_MODULES.get(extra, ()):
            pytest.importorskip(module, reason=f"the {extra!r} extra is not installed")
    if DEVICE_EXTRAS & set(extras):
        try:
            atrous_cl.get_queue()
        except atrous_cl.DeviceError as e:
            pytest.skip(f"no working OpenCL device: {e}")
    monkeypatch.chdir(tmp_path)  # the export block writes a file
    run_alone(code, f"README.md block {index} ({title})")


def test_a_block_using_an_earlier_blocks_name_fails():
    # The check above must catch a block that only works after another one.
    first = "# needs: pip install \".[pocl]\"\nimport numpy as np\nvalue = np.ones(3)\n"
    second = "# needs: pip install \".[pocl]\"\nimport numpy as np\nprint(np.sum(value))\n"
    blocks = readme_blocks(f"## A\n\n```python\n{first}```\n\n## B\n\n```python\n{second}```\n")
    assert [title for title, _ in blocks] == ["A", "B"]
    run_alone(blocks[0][1], "A")
    with pytest.raises(NameError, match="value"):
        run_alone(blocks[1][1], "B")


@pytest.mark.parametrize("code", ["import numpy as np\n", "# needs: the onnx extra\nimport onnx\n", ""])
def test_a_block_must_say_what_it_needs(code):
    with pytest.raises(ValueError, match="must start with"):
        needed_extras(code)


def test_needed_extras_reads_the_first_line():
    assert needed_extras('# needs: pip install ".[pocl,onnx]" (or any OpenCL driver)\nx = 1\n') \
        == ["pocl", "onnx"]


def test_setup_commands_match_ci():
    # The README's two set-up commands are CI's step 1: same extras, same commands.
    setup = re.search(r"^## Set up\n.*?^```sh\n(.*?)^```", README.read_text(encoding="utf-8"),
                      flags=re.S | re.M).group(1)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    step1 = ci[ci.index("== 1."):ci.index("== 1b.")]
    installed = set(re.search(r'pip install --quiet "\.\[([\w,]+)\]"', step1).group(1).split(","))
    commands = [line.split("#")[0].strip() for line in setup.splitlines() if line.strip()]
    assert len(commands) == 2
    for command in commands:
        install, run = (part.strip() for part in command.split("&&"))
        extras = set(re.fullmatch(r'pip install "\.\[([\w,]+)\]"', install).group(1).split(","))
        assert extras <= installed, f"README installs {extras}, CI's step 1 only {installed}"
        assert re.search(rf"^{re.escape(run)}$", step1, flags=re.M), f"CI's step 1 does not run {run!r}"


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "examples").glob("*.py")))
def test_example_runs(queue, script, capsys):
    runpy.run_path(str(ROOT / "examples" / script), run_name="__main__")
    assert capsys.readouterr().out  # each example reports what it did
