"""What an install gets: the CPU build of torch on Linux, the corpus inside the package, and a CI
that runs the README's test command without waiting on an unreachable index."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT
from packaging.requirements import Requirement
from packaging.version import Version

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def requirement_lines(path) -> list[str]:
    return [
        line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]


def test_requirements_point_pip_and_uv_at_the_cpu_wheels_before_any_package():
    lines = requirement_lines(ROOT / "requirements.txt")
    assert lines[0] == f"--extra-index-url {CPU_INDEX}"
    torch = next(Requirement(line) for line in lines[1:] if line.startswith("torch"))
    assert str(torch.specifier) == "==2.13.0"  # no "+cpu": macOS has no such wheel


def test_the_pin_picks_the_cpu_wheel_where_both_builds_exist():
    """On Linux the package index offers 2.13.0 (CUDA) and the CPU index 2.13.0+cpu: both match
    "==2.13.0" and pip and uv take the higher version, which is the local +cpu build."""
    torch = next(
        Requirement(line) for line in requirement_lines(ROOT / "requirements.txt") if line.startswith("torch")
    )
    linux = ["2.13.0", "2.13.0+cpu", "2.14.0+cpu"]
    chosen = max((v for v in linux if torch.specifier.contains(v)), key=Version)
    assert chosen == "2.13.0+cpu"
    assert torch.specifier.contains("2.13.0")  # macOS arm64: the plain wheel


def test_ci_fails_fast_on_the_unreachable_index_and_runs_the_readmes_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    command = re.search(
        r"```bash\n(python -m pip install -r requirements-dev\.txt[^\n]*pytest)\n```", readme
    ).group(1)
    assert command in ci.splitlines()
    assert ci.index("export PIP_RETRIES=0") < ci.index(command)


@pytest.mark.slow
def test_the_wheel_carries_the_verdict(tmp_path):
    """`pip install .` (and any wheel) ships The Verdict inside core/, so it works offline."""
    src = tmp_path / "src"  # a copy: a build writes build/ and *.egg-info beside its sources
    shutil.copytree(ROOT / "core", src / "core", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", src)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("losslens-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert "core/models/data/the-verdict.txt" in names
        assert (
            z.read("core/models/data/the-verdict.txt")
            == (ROOT / "core" / "models" / "data" / "the-verdict.txt").read_bytes()
        )
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
