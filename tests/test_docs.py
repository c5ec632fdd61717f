"""Every Python example in docs/design.md (the contract) runs, in order, in one namespace."""

import pathlib
import re

import pytest

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "design.md"


@pytest.mark.slow  # loads both shipped models and compiles five programs (~25 s)
def test_contract_examples_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 6, "docs/design.md lost its examples"
    namespace: dict = {}
    for index, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name}[example {index}]", "exec"), namespace)
    assert "accepted" in capsys.readouterr().out
