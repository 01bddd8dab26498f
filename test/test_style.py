"""The tree passes its own lint and format checks: ruff (pyproject.toml) and clang-format (.clang-format)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPP_PATTERNS = (
    "espnet_rwkv/**/*.cu",
    "espnet_rwkv/**/*.cpp",
    "espnet_rwkv/**/*.cuh",
    "espnet_rwkv/**/*.h",
    "tools/**/*.h",
    "tools/**/*.cpp",
)
CPP_SOURCES = sorted(str(p.relative_to(ROOT)) for pattern in CPP_PATTERNS for p in ROOT.glob(pattern))


def _tool(name: str) -> str:
    """The tool installed beside this Python (the test extra installs both), else on PATH."""
    beside = Path(sys.executable).parent / name
    path = str(beside) if beside.exists() else shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return path


def _run(*cmd):
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout[-4000:]}{result.stderr[-4000:]}"


def test_ruff_lint():
    _run(_tool("ruff"), "check", ".")


def test_ruff_format():
    _run(_tool("ruff"), "format", "--check", ".")


def test_clang_format():
    assert CPP_SOURCES, "no C++/CUDA sources found"
    _run(_tool("clang-format"), "--dry-run", "-Werror", *CPP_SOURCES)
