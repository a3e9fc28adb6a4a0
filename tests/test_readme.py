"""The README's example runs as written on whatever machine runs the tests (issue 9 item 7)."""

import pathlib
import re

import torch


def readme_example() -> str:
    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Example", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs_here(capsys):
    code = readme_example()
    torch._dynamo.reset()
    scope: dict = {}
    exec(compile(code, "README.md:Example", "exec"), scope)
    logits = scope["logits"]
    assert logits.shape[:2] == (1, 16) and bool(torch.isfinite(logits).all())
    out = capsys.readouterr().out
    assert "gfx942" in out
