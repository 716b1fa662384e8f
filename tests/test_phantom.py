"""The phantom generator: deterministic, independent per study, visible findings, compact matching reports."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import cxr_robust.data.phantom as ph
from cxr_robust.data.phantom import Nodule, phantom, render_image, study_seed, study_text

SMALL = 8  # studies in most sets below: enough for both view counts, fast on a shared CPU


@pytest.fixture(scope="module")
def tiny():
    """The 'tiny' split (64 studies), generated once for the module."""
    return phantom("tiny")


def _normal(desc: ph.StudyDescription) -> ph.StudyDescription:
    """``desc`` with every finding removed (same patient anatomy)."""
    return dataclasses.replace(desc, heart_grade=0, effusion_side="none", effusion_size=None, pneumothorax="none",
                               opacity_zone=None, nodules=(), et_tube=False, central_line=False, pacemaker=False)


def test_same_seed_gives_identical_bytes_and_text() -> None:
    a, b = phantom("tiny", num_studies=SMALL), phantom("tiny", num_studies=SMALL)
    assert a.image_fingerprint() == b.image_fingerprint()
    assert a.texts("findings+impression") == b.texts("findings+impression")
    assert a.image_ids == b.image_ids and a.views == b.views


def test_different_seed_gives_different_set() -> None:
    a, b = phantom("tiny", seed=0, num_studies=SMALL), phantom("tiny", seed=1, num_studies=SMALL)
    assert a.image_fingerprint() != b.image_fingerprint()
    assert a.texts("findings+impression") != b.texts("findings+impression")
    assert not set(a.study_ids) & set(b.study_ids)


def test_ids_names_and_meta(tiny) -> None:
    assert tiny.name == "phantom-tiny-s0" and tiny.num_studies == 64 and not tiny.credentialed
    assert tiny.study_ids[123 % 64] == "ph-tiny-s0-000059"
    assert tiny.image_ids[0] == "ph-tiny-s0-000000-0"
    assert set(tiny.views) <= {"AP", "PA"}
    assert tiny.meta["generator_version"] == ph.GENERATOR_VERSION
    assert (tiny.meta["split"], tiny.meta["seed"], tiny.meta["num_studies"]) == ("tiny", 0, 64)
    assert tiny.meta["num_images"] == tiny.num_images
    assert phantom("eval", num_studies=3).name == "phantom-eval-s0-n3"


def test_images_are_uint8_films_with_dark_lungs(tiny) -> None:
    for arr in tiny.image_arrays:
        assert arr.dtype == np.uint8 and arr.shape == (256, 256)
        assert arr.std() > 35, "too little contrast for a chest film"
        assert (arr < 80).mean() > 0.06 and (arr > 128).mean() > 0.25  # dark lungs/air, bright tissue
        assert (arr == 255).mean() < 0.01, "saturated"
    for j, arr in enumerate(tiny.image_arrays):
        desc = study_text("tiny", 0, int(tiny.image_study[j]))[0]
        a = desc.anatomy

        def patch(x: float, y: float) -> float:
            r, c = int(y * 256), int(x * 256)
            return float(np.median(arr[r - 5:r + 6, c - 5:c + 6]))

        lungs = min(patch(*ph._zone_point(a, z, 0.5, 0.5)) for z in ("right upper zone", "left upper zone"))
        heart = patch(a.center_x + ph.CTR[desc.heart_grade] * a.half_width / 3, a.diaphragm - 0.065)
        assert lungs < heart - 40, f"image {tiny.image_ids[j]}: lungs {lungs} not darker than heart {heart}"


def test_image_size_is_respected() -> None:
    rs = phantom("tiny", num_studies=2, image_size=64)
    assert all(a.shape == (64, 64) and a.dtype == np.uint8 for a in rs.image_arrays)


def test_second_exposure_is_the_same_patient(tiny) -> None:
    pairs = [np.flatnonzero(tiny.image_study == s) for s in range(tiny.num_studies)]
    pairs = [p for p in pairs if len(p) == 2]
    assert 0.6 < len(pairs) / tiny.num_studies < 0.95  # about 78 % of studies have a second image
    for i, k in pairs:
        a, b = tiny.image_arrays[i], tiny.image_arrays[k]
        assert not np.array_equal(a, b)
        # Only a small shift / rotation / contrast change: after the best shift of at most 16 px (4 pooled
        # pixels) the two exposures agree closely.
        pa, pb = (x.astype(float).reshape(64, 4, 64, 4).mean((1, 3)) for x in (a, b))
        core = pa[4:-4, 4:-4].ravel()
        best = max(np.corrcoef(core, pb[4 + dy:60 + dy, 4 + dx:60 + dx].ravel())[0, 1]
                   for dy in range(-4, 5) for dx in range(-4, 5))
        assert best > 0.85, f"{tiny.image_ids[i]} and its second exposure differ too much ({best:.2f})"


def test_reports_mention_every_finding(tiny) -> None:
    for s, (f, imp) in enumerate(zip(tiny.findings, tiny.impressions)):
        desc = study_text("tiny", 0, s)[0]
        assert f.strip() and imp.strip()
        for phrase in ph.finding_phrases(desc):
            assert phrase in f.lower(), f"{tiny.study_ids[s]}: {phrase!r} missing from {f!r}"
        if desc.is_normal:
            assert "no acute" in imp.lower()


@given(split=st.sampled_from(sorted(ph.SPLITS)), seed=st.integers(0, 2**31), index=st.integers(0, 10**6))
def test_any_report_mentions_its_findings_and_positives(split: str, seed: int, index: int) -> None:
    desc, findings, impression = study_text(split, seed, index)
    low = findings.lower()
    assert all(p in low for p in ph.finding_phrases(desc))
    imp = impression.lower()
    if desc.pneumothorax != "none":
        assert f"{desc.pneumothorax} pneumothorax" in imp
    if desc.effusion_side != "none":
        assert f"{desc.effusion_side} effusion" in imp
    if desc.heart_grade >= 2:
        assert "cardiomegaly" in imp
    for n in desc.nodules:
        assert f"{n.size_mm} mm" in low


def test_train_and_eval_never_share_ids_or_seeds() -> None:
    train, ev = phantom("train", num_studies=4), phantom("eval", num_studies=4)
    assert not set(train.study_ids) & set(ev.study_ids)
    assert not set(train.image_ids) & set(ev.image_ids)
    for i in range(4):
        for purpose in ("description", "report", "views", "image"):
            a = study_seed("train", 0, i, purpose).generate_state(4)
            assert not np.array_equal(a, study_seed("eval", 0, i, purpose).generate_state(4))
    assert train.texts("findings+impression") != ev.texts("findings+impression")


def test_a_study_does_not_depend_on_how_many_are_generated() -> None:
    small, large = phantom("eval", num_studies=10), phantom("eval", num_studies=25)
    head = large.subset(range(10))
    assert small.study_ids == head.study_ids and small.image_ids == head.image_ids
    assert small.findings == head.findings and small.impressions == head.impressions
    assert small.image_fingerprint() == head.image_fingerprint()


def test_workers_give_identical_results() -> None:
    one, two = phantom("tiny", num_studies=6, workers=1), phantom("tiny", num_studies=6, workers=2)
    assert one.image_fingerprint() == two.image_fingerprint()
    assert one.texts("findings+impression") == two.texts("findings+impression")


# Image fractions (rows y0..y1, cols x0..x1) that must hold nearly all of a finding's pixels. Patient right is
# on the image left, as chest films are displayed.
FINDINGS = {
    "large right effusion": (dict(effusion_side="right", effusion_size="large"), (0.35, 1.0, 0.0, 0.5)),
    "small left effusion": (dict(effusion_side="left", effusion_size="small"), (0.5, 1.0, 0.5, 1.0)),
    "right pneumothorax": (dict(pneumothorax="right"), (0.05, 0.95, 0.0, 0.5)),
    "left pneumothorax": (dict(pneumothorax="left"), (0.05, 0.95, 0.5, 1.0)),
    "right upper opacity": (dict(opacity_zone="right upper zone"), (0.0, 0.55, 0.0, 0.5)),
    "left lower nodule": (dict(nodules=(Nodule(12, "left lower zone", 0.5, 0.5),)), (0.4, 0.95, 0.5, 1.0)),
    "cardiomegaly": (dict(heart_grade=3), (0.4, 1.0, 0.2, 1.0)),
    "ET tube": (dict(et_tube=True), (0.0, 0.4, 0.35, 0.65)),
    "central line": (dict(central_line=True), (0.0, 0.6, 0.0, 0.55)),
    "pacemaker": (dict(pacemaker=True), (0.0, 0.85, 0.4, 1.0)),
}


@pytest.mark.parametrize("name", list(FINDINGS))
def test_findings_visibly_change_the_image_where_they_belong(name: str) -> None:
    change, (y0, y1, x0, x1) = FINDINGS[name]
    base = _normal(study_text("tiny", 0, 3)[0])
    seed = study_seed("tiny", 0, 3, "image")
    clean = render_image(base, np.random.default_rng(seed)).astype(int)
    sick = render_image(dataclasses.replace(base, **change), np.random.default_rng(seed)).astype(int)
    diff = np.abs(sick - clean)
    assert diff.max() >= 40, f"{name}: strongest change only {diff.max()} grey levels"
    assert (diff > 20).sum() >= 25, f"{name}: too few visibly changed pixels"
    inside = diff[int(y0 * 256):int(y1 * 256), int(x0 * 256):int(x1 * 256)].sum()
    assert inside / diff.sum() > 0.85, f"{name}: only {inside / diff.sum():.0%} of the change in its region"


def _eval_reports() -> list[str]:
    return [" ".join(study_text("eval", 0, i)[1:]) for i in range(ph.SPLITS["eval"])]


def test_eval_reports_are_nearly_unique() -> None:
    reports = _eval_reports()
    assert len(set(reports)) >= 0.8 * len(reports)


def test_reports_fit_in_the_clip_context() -> None:
    tokenizer = pytest.importorskip("open_clip.tokenizer").SimpleTokenizer()
    lengths = np.array([len(tokenizer.encode(r)) + 2 for r in _eval_reports()])  # + start/end tokens
    assert (lengths <= 77).mean() >= 0.95
    assert lengths.mean() < 70


def test_cache_round_trip(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = phantom("tiny", num_studies=SMALL, cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz" and f"v{ph.GENERATOR_VERSION}" in files[0].name

    def refuse(*args: object) -> None:
        raise AssertionError("the cached set should have been loaded, not regenerated")

    monkeypatch.setattr(ph, "_make_range", refuse)
    again = phantom("tiny", num_studies=SMALL, cache_dir=tmp_path)
    assert again.image_fingerprint() == first.image_fingerprint()
    assert all(np.array_equal(a, b) for a, b in zip(first.image_arrays, again.image_arrays))
    assert (again.name, again.study_ids, again.image_ids, again.views, again.findings, again.impressions) == \
        (first.name, first.study_ids, first.image_ids, first.views, first.findings, first.impressions)
    assert np.array_equal(again.image_study, first.image_study) and again.meta == first.meta
    monkeypatch.undo()
    files[0].write_bytes(b"truncated")  # a broken cache file is rebuilt, never used
    rebuilt = phantom("tiny", num_studies=SMALL, cache_dir=tmp_path)
    assert rebuilt.image_fingerprint() == first.image_fingerprint()
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


@pytest.mark.parametrize("kwargs, named", [
    (dict(split="validation"), "'validation'"),
    (dict(num_studies=0), "num_studies=0"),
    (dict(num_studies=-5), "num_studies=-5"),
    (dict(image_size=16), "image_size=16"),
    (dict(seed=-1), "-1"),
    (dict(workers=0), "workers=0"),
])
def test_bad_arguments_raise_naming_the_value(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        phantom(**kwargs)


@pytest.mark.slow
def test_default_eval_set_has_the_papers_size() -> None:
    rs = phantom()
    assert rs.name == "phantom-eval-s0" and rs.num_studies == 994
    assert 1700 <= rs.num_images <= 1850
    assert set(rs.counts()["views"]) == {"AP", "PA"}
