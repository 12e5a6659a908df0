"""The README's "Using it" snippet runs as written."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _using_it_block() -> str:
    text = README.read_text()
    section = text[text.index("## Using it"):]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "README 'Using it' has no python block"
    return m.group(1)


def test_using_it_snippet_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_using_it_block(), "README.md:Using it", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "accel_sim:" in out and "fewer cycles than dense" in out
    assert (tmp_path / "gated.pt").exists() and (tmp_path / "profile.yaml").exists()
