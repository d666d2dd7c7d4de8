"""The project's promises about itself: CI runs the README's commands; every package is installed."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_block(heading: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {heading}\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, f"README section {heading!r} has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_ci_runs_readme_install_and_test_commands():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    for heading in ("Install", "Test"):
        commands = _readme_block(heading)
        assert len(commands) == 1, f"README {heading} must be one command, got {commands}"
        assert commands[0] in ci_lines, f".ci/run does not run the README {heading} command {commands[0]!r}"


def test_every_package_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {"cssformer_kernels"} | {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "cssformer").rglob("__init__.py")
    }
    for sub in (ROOT / "kernels").rglob("__init__.py"):
        on_disk.add(".".join(("cssformer_kernels",) + sub.parent.relative_to(ROOT / "kernels").parts))
    missing = sorted(on_disk - listed)
    assert not missing, f"packages missing from pyproject.toml [tool.setuptools] packages: {missing}"
