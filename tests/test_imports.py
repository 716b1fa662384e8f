"""Importing the package and its pytest plugin stays light (no torch, open_clip or transformers)."""

from __future__ import annotations

import subprocess
import sys


def test_import_does_not_pull_heavy_libraries() -> None:
    code = ("import sys, cxr_robust, cxr_robust.plugin, cxr_robust.gate, cxr_robust.models; "
            "heavy = [m for m in ('torch', 'open_clip', 'transformers') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing cxr_robust pulled in {out}"
