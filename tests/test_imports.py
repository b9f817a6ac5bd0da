"""The module graph: what analysis and the sweep description may pull in."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["analysis", "search.spec"])
def test_import_does_not_import_ray_or_the_cli(module: str) -> None:
    code = (
        f"import sys, {module}; "
        "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.') or m in ('search.cli', "
        "'search.sweep')); print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing {module} imported {out}"
