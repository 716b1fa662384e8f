"""Repository-level pytest wiring only: the cxr-robust plugin itself is registered by its pytest11 entry point.

Keeping this file thin means `pytest -m robustness` behaves the same in this repository as in a user's
project that installs cxr-robust.
"""
