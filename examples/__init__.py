"""Worked examples for cxr-robust users (importable as ``examples.*`` from the repository root)."""
