"""The README's Python snippets run as written (on a tiny model, with smaller SB3 budgets)."""

import re
from pathlib import Path

from robobrain.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
BUDGETS = {".learn(10_000)": ".learn(64)", ".learn(1_000)": ".learn(32)"}


def test_readme_python_snippets_run(tmp_path, monkeypatch):
    """Quickstart, the world-model API and SB3 in and on the world model, in the README's order,
    against `data/push` and `runs/wm` made as the README's commands make them (tiny)."""
    monkeypatch.chdir(tmp_path)
    main(["collect", "--env", "robobrain/Push-v0", "--episodes", "2", "--image-size", "16",
          "--out", "data/push", "--no-progress"])  # fmt: skip
    main(["train-wm", "--data", "data/push", "--run-dir", "runs/wm", "--preset", "debug", "--steps", "2",
          "--no-progress"])  # fmt: skip
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 3, "a README snippet was added or removed: check this test still runs it"
    for block in blocks:  # (this process registered them long before: a block would pass without)
        if 'gym.make("robobrain/' in block:
            assert "import robobrain.envs" in block, "a snippet makes a robobrain env without registering it"
    for budget in BUDGETS:  # (a README budget this test does not shrink would run for minutes)
        assert sum(b.count(budget) for b in blocks) == 1, budget
    assert sum(b.count(".learn(") for b in blocks) == len(BUDGETS)
    namespace: dict = {}
    for block in blocks:
        for budget, small in BUDGETS.items():
            block = block.replace(budget, small)
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["frames"].shape == (1, 12, 16, 16, 3)
    assert namespace["rollout"].reward.shape == (512, 12)
