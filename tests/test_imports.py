"""The module graph: what analysis and the sweep description may pull in."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["analysis", "search.spec", "search.inline"])
def test_import_does_not_import_ray_or_the_cli(module: str) -> None:
    code = (
        f"import sys, {module}; "
        "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.') or m in ('search.cli', "
        "'search.sweep')); print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing {module} imported {out}"


@pytest.mark.parametrize("argv", [["--help"], [], ["run"], ["train", "--help"]])
def test_help_and_argument_errors_do_not_import_torch(argv: list[str]) -> None:
    """`csweep --help` and argument errors answer at once: torch (seconds to import) is left for real work; only
    `train --help`, which lists every method's settings, needs it."""
    code = (
        "import sys\nfrom search.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == str(argv == ["train", "--help"]), out
