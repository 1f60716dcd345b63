"""The README's Python examples run as written, so they stay true."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples_and_they_run(capsys):
    blocks = python_blocks()
    assert blocks, "the README lost its Python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "readme"})
    assert "population bias" in capsys.readouterr().out


def test_readme_opens_with_the_two_commands():
    head = README.read_text().split("---")[0]
    assert re.findall(r"^make (\w+)", head, flags=re.M) == ["lab", "test"]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci
