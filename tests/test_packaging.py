"""The project's promises about itself: CI runs the README's commands; every package is installed; the
kernels-only distribution needs nothing but torch (and triton on Linux)."""
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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


def _listed_packages(pyproject: Path) -> set:
    return set(tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["packages"])


def test_every_package_is_listed_in_pyproject():
    toolkit = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "cssformer").rglob("__init__.py")}
    missing = sorted(toolkit - _listed_packages(ROOT / "pyproject.toml"))
    assert not missing, f"packages missing from pyproject.toml [tool.setuptools] packages: {missing}"
    kernels = {".".join(("cssformer_kernels",) + p.parent.relative_to(ROOT / "kernels").parts)
               for p in (ROOT / "kernels").rglob("__init__.py")}
    missing = sorted(kernels - _listed_packages(ROOT / "kernels" / "pyproject.toml"))
    assert not missing, f"packages missing from kernels/pyproject.toml [tool.setuptools] packages: {missing}"


def _requirement_closure(dist: str) -> set:
    """Canonical names of ``dist`` and everything it requires (unconditionally or for this platform)."""
    seen, todo = set(), [dist]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [r.name for r in map(Requirement, requires) if r.marker is None or r.marker.evaluate({"extra": ""})]
    return seen


def _torch_only_folder(folder: Path) -> list[str]:
    """``folder`` filled with links to the top-level modules of torch, triton and what they require
    (their installed files, no second install): a path entry where torch imports and nothing else of
    this environment does. Returns the distributions linked."""
    site = Path(torch.__file__).resolve().parents[1]
    wanted = _requirement_closure("torch") | _requirement_closure("triton")
    folder.mkdir()
    linked = set()
    for top, dists in metadata.packages_distributions().items():
        if not any(canonicalize_name(d) in wanted for d in dists):
            continue
        for candidate in [site / top, *site.glob(f"{top}.py"), *site.glob(f"{top}.*.so")]:
            if candidate.exists() and not (folder / candidate.name).exists():
                (folder / candidate.name).symlink_to(candidate)
                linked.update(canonicalize_name(d) for d in dists)
    return sorted(linked)


IMPORT_CHECK = """
import json, sys
sys.path[:0] = sys.argv[1:3]
toolkit = set(sys.argv[3].split(","))
import torch
import cssformer_kernels as K
import cssformer_kernels.integrations.transformers
value, ss, lsi, loc, w = K.shapes.make_inputs(K.shapes.ProblemShape(N=1, levels=((3, 2), (1, 1)), M=1, D=4, P=2, Q=3))
out = K.ms_deform_attn(value, ss, lsi, loc, w, backend="reference")
layer = K.MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=1, backend="reference")
layer(torch.randn(1, 3, 8), torch.rand(1, 3, 2), torch.randn(1, 7, 8), [(2, 3), (1, 1)]).sum().backward()
hidden = []
for name in sorted(toolkit):
    try:
        __import__(name)
    except ImportError:
        hidden.append(name)
print(json.dumps({"file": K.__file__, "version": K.__version__, "out": list(out.shape), "hidden": hidden,
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in toolkit)}))
"""


def test_kernels_only_wheel_builds_and_imports_without_the_toolkit(tmp_path):
    """``cssformer-kernels`` built from kernels/ (offline, with the setuptools of this environment),
    its metadata, and an import in an interpreter that sees torch but none of the toolkit's other
    dependencies: ``python -S`` (no site-packages) whose path holds only the unpacked wheel and a folder
    of links to torch, triton and their own requirements."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "kernels", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("cssformer_kernels-*.whl")
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacked)
        names = archive.namelist()
    (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    meta = (unpacked / meta_name).read_text()
    assert "Name: cssformer-kernels" in meta
    requires = [Requirement(line.split(":", 1)[1]) for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert sorted(r.name for r in requires) == ["torch", "triton"]
    (triton,) = [r for r in requires if r.name == "triton"]
    assert triton.marker is not None and str(triton.marker) == 'platform_system == "Linux"'
    assert not [n for n in names if n.split("/")[0] not in ("cssformer_kernels",) and ".dist-info/" not in n], names
    assert "cssformer_kernels/integrations/transformers.py" in names

    torch_dists = _torch_only_folder(tmp_path / "torch-only")
    assert "torch" in torch_dists and "timm" not in torch_dists
    toolkit = ["cssformer", "timm", "fvcore", "rich", "yaml", "PIL", "safetensors", "transformers", "onnx"]
    proc = subprocess.run([sys.executable, "-S", "-c", IMPORT_CHECK, str(unpacked), str(tmp_path / "torch-only"),
                           ",".join(toolkit)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["file"].startswith(str(unpacked)), result["file"]
    assert result["out"] == [1, 3, 4]
    assert result["hidden"] == sorted(toolkit), result  # the interpreter really does not see them
