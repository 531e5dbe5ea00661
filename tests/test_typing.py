"""The package type-checks: mypy over ``src/harp`` with the settings of pyproject."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mypy_finds_no_error():
    pytest.importorskip("mypy")
    if not (ROOT / "src" / "harp").is_dir():
        pytest.skip("the sources are not beside the tests (an installed wheel)")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
