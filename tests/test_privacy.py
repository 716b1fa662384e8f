"""Security: the test suite is offline, and credentialed data (report text, pixels) never reaches an output.

The second part runs a whole gate session (load MIMIC, sweep, results, HTML report, baselines and ranks) on
a fake MIMIC-CXR-JPG tree whose reports carry a unique canary string and whose images carry unique pixel
noise, then scans every file written, every file name, every ``.npz`` member and every log line.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_robust.gate import GateOptions, GateSession
from tests.fake_mimic import build_fake_mimic, default_studies, mimic_text

CANARY = "Zq7CanaryXr41"
MODEL = "tests.privacy_model:build"


# --------------------------------------------------------------------------------------------------
# Offline


def test_opening_a_network_connection_raises() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        with pytest.raises(RuntimeError, match="tests must stay offline"):
            sock.connect(("192.0.2.1", 80))  # TEST-NET-1: never routed, and the guard refuses first
    with pytest.raises(RuntimeError, match="tests must stay offline"):
        socket.create_connection(("198.51.100.7", 443), timeout=0.5)


def test_loopback_stays_usable() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=5):
            pass


def test_connect_ex_is_blocked_too() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        with pytest.raises(RuntimeError, match="tests must stay offline"):
            sock.connect_ex(("192.0.2.1", 80))


# --------------------------------------------------------------------------------------------------
# Credentialed data never reaches outputs


def _canary_tree(root: Path) -> tuple[Path, list[bytes]]:
    """A fake MIMIC tree with canary reports and noise images; returns the root and byte needles."""
    studies = []
    for s in default_studies():
        if s.text is not None and s.findings and s.impression:
            findings, impression = f"{CANARY} {s.findings}", f"{CANARY} {s.impression}"
            s = dataclasses.replace(s, text=mimic_text(("INDICATION", f"{CANARY} cough."), ("FINDINGS", findings),
                                                       ("IMPRESSION", impression)),
                                    findings=findings, impression=impression)
        studies.append(s)
    build_fake_mimic(root, studies)
    needles: list[bytes] = []
    for i, path in enumerate(sorted((root / "files").rglob("*.jpg"))):
        noise = np.random.default_rng(1000 + i).integers(0, 256, (40, 48), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noise).save(buf, "JPEG", quality=95)
        raw = buf.getvalue()
        path.write_bytes(raw)
        pixels = np.asarray(Image.open(path).convert("L"))
        mid = len(raw) // 2
        needles += [raw[mid:mid + 24], raw[mid:mid + 24].hex().encode(), base64.b64encode(raw)[:48],
                    pixels[20, :24].tobytes(), pixels[:, 10].tobytes()[:24]]
    return root, needles


def _leaks(blob: bytes, needles: list[bytes]) -> list[str]:
    found = [n.decode() for n in (CANARY.encode(), CANARY.lower().encode(), CANARY.upper().encode()) if n in blob]
    return found + [f"image bytes {n[:8].hex()}..." for n in needles if n in blob]


def _npz_members(path: Path) -> bytes:
    """Every member of an ``.npz`` as bytes, decompressed (a raw scan would miss compressed members)."""
    out = []
    with np.load(path, allow_pickle=False) as npz:
        for name in npz.files:
            arr = npz[name]
            out += [name.encode(), arr.tobytes(), str(arr.tolist()).encode()]
    return b"\n".join(out)


def test_credentialed_text_and_pixels_never_reach_outputs(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    root, needles = _canary_tree(tmp_path / "mimic")
    out = tmp_path / "out"
    options = GateOptions(models=(MODEL,), dataset="mimic", mimic_root=str(root), ratios=(0.0, 0.25), ks=(1, 5),
                          device="cpu", cache_dir=str(out / "cache"), report_dir=str(out / "report"),
                          baselines_dir="baselines")
    session = GateSession(options, rootdir=out)
    data = session.dataset()
    assert data.credentialed and all(CANARY in t for t in data.texts("findings+impression"))  # it was used
    run = session.run(MODEL)
    assert run.error is None and run.result is not None and run.result.meta["text_encodings"] == data.num_studies
    written = list(session.write_outputs().values()) + session.update_baselines()[0]
    assert {p.name for p in written} >= {"results.json", "results.csv", "report.html"}

    first_image = sorted((root / "files").rglob("*.jpg"))[0]  # positive controls: the scan finds what it seeks
    assert _leaks(first_image.read_bytes(), needles) and _leaks(np.asarray(Image.open(first_image)).tobytes(), needles)
    assert _leaks(data.findings[0].lower().encode(), needles)

    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".npz" and "cache" in p.parts for p in files)  # the cache was scanned too
    problems = []
    for path in files:
        rel = str(path.relative_to(out))
        blob = rel.encode() + b"\n" + path.read_bytes()
        if path.suffix == ".npz":
            blob += _npz_members(path)
        problems += [f"{rel}: {leak}" for leak in _leaks(blob, needles)]
    captured = capfd.readouterr()
    for name, text in (("log", caplog.text), ("stdout", captured.out), ("stderr", captured.err)):
        problems += [f"{name}: {leak}" for leak in _leaks(text.encode(), needles)]
    assert not problems, problems


def test_errors_about_credentialed_reports_name_ids_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    root, needles = _canary_tree(tmp_path / "mimic")
    out = tmp_path / "out"
    options = GateOptions(models=(MODEL,), dataset="mimic", mimic_root=str(root), ratios=(0.0,), ks=(1, 5),
                          device="cpu", cache_dir=str(out / "cache"), report_dir=str(out / "report"),
                          text_policy="longest")
    session = GateSession(options, rootdir=out)
    data = session.dataset()
    data.findings[1] = data.impressions[1] = " "  # an empty report: the sweep must name the study, not text
    run = session.run(MODEL)
    assert run.error is not None and data.study_ids[1] in str(run.error)
    session.write_outputs()
    for path in (p for p in out.rglob("*") if p.is_file()):
        assert not _leaks(path.read_bytes(), needles), path
    assert not _leaks((str(run.error) + caplog.text).encode(), needles)
