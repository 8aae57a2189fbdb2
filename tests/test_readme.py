"""Every ``python`` snippet in README.md runs as written, in order, as in one session."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_snippets_run_in_order() -> None:
    assert len(SNIPPETS) >= 2, "README.md lost its runnable examples"
    namespace = {"__name__": "readme"}
    for index, snippet in enumerate(SNIPPETS):
        exec(compile(snippet, f"README.md[python #{index}]", "exec"), namespace)
    # The snippets built and trained what they claim.
    assert type(namespace["actor"]).__name__ == "HMCActor"
    assert 1e-3 <= namespace["loss"].beta.item() <= 10.0
    assert type(namespace["ld_actor"]).__name__ == "LangevinFlowActor"
    assert 1e-3 <= namespace["ld_loss"].beta.item() <= 100.0
