"""The README's Python example runs as written (in a temporary folder)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_library_example(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        # the example's run is the README's; shorten its horizon only, keep everything else
        code = code.replace("T=2.0", "T=0.2")
        exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "out" / "result.npz").is_file()
