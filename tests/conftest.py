"""Shared test settings: hypothesis profiles and an offline guarantee."""

from __future__ import annotations

import os
import socket

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", deadline=None, max_examples=100,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=30)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Nothing in the test suite may reach the network (weights, datasets and hubs are never downloaded).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test that opens a non-local network connection."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1") or self.family == socket.AF_UNIX):
            return real_connect(self, address)
        raise RuntimeError(f"test tried to open a network connection to {address!r}; tests must stay offline")

    def guarded_ex(self: socket.socket, address: object) -> int:
        guarded(self, address)  # raises for non-local addresses
        return real_connect_ex(self, address)

    def guarded_getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        if isinstance(host, (str, bytes)) and host not in ("localhost", b"localhost") and \
                not str(host).startswith(("127.", "::1")):
            raise RuntimeError(f"test tried to resolve {host!r}; tests must stay offline")
        return real_getaddrinfo(host, *args, **kwargs)

    real_connect_ex, real_getaddrinfo = socket.socket.connect_ex, socket.getaddrinfo
    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_ex)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)


CXR_ENV_VARS = ("CXR_ROBUST_MODELS", "CXR_ROBUST_DATASET", "CXR_ROBUST_MIMIC_ROOT", "CXR_ROBUST_MIMIC_REPORTS",
                "CXR_ROBUST_MANIFEST", "CXR_ROBUST_WEIGHTS_DIR", "CXR_ROBUST_BERT_VOCAB", "CXR_ROBUST_DEVICE",
                "CXR_ROBUST_CLIP_WEIGHTS", "CXR_ROBUST_CXR_REPAIR_WEIGHTS", "CXR_ROBUST_PHANTOM_CLIP_WEIGHTS")
"""The machine's settings that would change what a CLI run does."""


@pytest.fixture
def clean_cxr_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's CXR_ROBUST_* settings must not leak into a test (``usefixtures`` it)."""
    for var in CXR_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
