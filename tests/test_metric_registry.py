"""The metric registry and label-aware counts against a brute-force oracle that tries every tie-breaking order.

The oracle is deliberately slow and obvious: for a tiny score matrix full of ties it walks every order of
the candidates (``itertools.permutations``), ranks them by a stable sort on score (so the permutation breaks
the ties), reads the true report's rank and the top k's relevant candidates, and averages in exact
fractions. Uniformly random tie-breaking is exactly the uniform average over those orders.
"""

from __future__ import annotations

import itertools
import math
import textwrap
from fractions import Fraction

import numpy as np
import pytest
import torch

from cxr_robust import metric_registry as reg
from cxr_robust.metric_registry import (Metric, UnknownMetricError, available_metrics, compute_metrics, get_metric,
                                        labelled_queries, metric_value, paired_metric_p, parse_metrics,
                                        per_query_values, register_metric)
from cxr_robust.metrics import LabelCounts, RankCounts, label_counts, rank_counts, recall_at_k
from cxr_robust.paired import _reorder, paired_cell
from cxr_robust.perturbations.base import Condition
from cxr_robust.results import load_ranks, save_ranks
from cxr_robust.scoring import score_ranks


class ClassRelevance:
    """Fake findings labels: candidate i has class ``classes[i]`` (-1: unlabelled); relevant = same class.

    With ``drop_own`` a row leaves out the query's own study, to check that the scorer puts it back.
    """

    def __init__(self, classes: np.ndarray, drop_own: bool = False) -> None:
        self.classes = np.asarray(classes)
        self.labelled = self.classes >= 0
        self.drop_own = drop_own

    def rows(self, study_indices: np.ndarray) -> np.ndarray:
        out = (self.classes[study_indices][:, None] == self.classes[None, :]) & self.labelled[None, :]
        if self.drop_own:
            out[np.arange(len(study_indices)), study_indices] = False
        return out


# ---- the oracle ---------------------------------------------------------------------------------------------

def oracle(scores: np.ndarray, targets: np.ndarray, relevance: ClassRelevance | None, ks: tuple[int, ...]) -> dict:
    """Per query, exact averages over every tie-breaking order, plus the best and worst order's rank."""
    m, n = scores.shape
    out = {"rank": [], "rr": [], "hit": [], "best": [], "worst": [], "lprec": [], "lhit": []}
    for q in range(m):
        row, target = scores[q], int(targets[q])
        labelled = relevance is not None and bool(relevance.labelled[target])
        rel = set()
        if labelled:
            rel = {j for j in range(n) if relevance.classes[j] == relevance.classes[target]} | {target}
        ranks, rr, hits, lprec, lhit = [], [], {k: [] for k in ks}, {k: [] for k in ks}, {k: [] for k in ks}
        for perm in itertools.permutations(range(n)):
            order = sorted(perm, key=lambda j: -row[j])  # stable: the permutation breaks ties
            rank = order.index(target) + 1
            ranks.append(rank)
            rr.append(Fraction(1, rank))
            for k in ks:
                hits[k].append(int(rank <= k))
                top = order[:k]
                lprec[k].append(Fraction(sum(j in rel for j in top), k))
                lhit[k].append(int(any(j in rel for j in top)))
        total = len(ranks)
        out["rank"].append(Fraction(sum(ranks), total))
        out["rr"].append(sum(rr) / total)
        out["hit"].append({k: Fraction(sum(hits[k]), total) for k in ks})
        out["best"].append(min(ranks))
        out["worst"].append(max(ranks))
        out["lprec"].append({k: sum(lprec[k]) / total if labelled else None for k in ks})
        out["lhit"].append({k: Fraction(sum(lhit[k]), total) if labelled else None for k in ks})
    return out


def tiny_case(seed: int) -> tuple[np.ndarray, np.ndarray, ClassRelevance]:
    """Integer scores in 0..2 (ties everywhere), N <= 6 candidates, 5 queries, some studies unlabelled."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 7))
    scores = rng.integers(0, 3, size=(5, n)).astype(np.float32)
    targets = rng.integers(0, n, size=5)
    classes = rng.integers(-1, 2, size=n)  # -1: no labels
    return scores, targets, ClassRelevance(classes, drop_own=bool(seed % 2))


def score(scores: np.ndarray, targets: np.ndarray, relevance=None, ks=(), chunk_rows: int = 8192) -> RankCounts:
    """score_ranks on embeddings whose products are exactly ``scores`` (query i = e_i scaled; candidate j = row)."""
    m, n = scores.shape
    img = torch.eye(m, dtype=torch.float32)
    txt = torch.as_tensor(scores.T.copy())  # (N, M): candidate j's coordinates are its score per query
    return score_ranks(img, txt, targets, chunk_rows=chunk_rows, relevance=relevance, label_ks=ks)


def _nan_or(x) -> float:
    return float("nan") if x is None else float(x)


SEEDS = list(range(8))


@pytest.mark.parametrize("seed", SEEDS)
def test_expected_policy_matches_every_tie_breaking_order(seed: int) -> None:
    scores, targets, rel = tiny_case(seed)
    n = scores.shape[1]
    ks = tuple(range(1, n + 1))
    want = oracle(scores, targets, rel, ks)
    counts = score(scores, targets, rel, ks)

    np.testing.assert_allclose(per_query_values(counts, "mrr"), [float(x) for x in want["rr"]], rtol=0, atol=1e-12)
    ranks = np.array([float(x) for x in want["rank"]])
    np.testing.assert_allclose(per_query_values(counts, "mean_rank"), ranks, rtol=0, atol=1e-12)
    assert metric_value(counts, "mean_rank") == pytest.approx(np.mean(ranks), abs=1e-12)
    assert metric_value(counts, "median_rank") == pytest.approx(np.median(ranks), abs=1e-12)
    assert metric_value(counts, "mrr") == pytest.approx(float(sum(want["rr"]) / len(want["rr"])), abs=1e-12)
    for k in ks:
        hits = np.array([float(h[k]) for h in want["hit"]])
        np.testing.assert_allclose(per_query_values(counts, "recall", k), hits, rtol=0, atol=1e-12)
        assert metric_value(counts, "recall", k) == recall_at_k(counts, [k])[k]  # exactly
        assert metric_value(counts, "recall", k) == pytest.approx(hits.mean(), abs=1e-12)
        lprec = np.array([_nan_or(x[k]) for x in want["lprec"]])
        lhit = np.array([_nan_or(x[k]) for x in want["lhit"]])
        np.testing.assert_allclose(per_query_values(counts, "label_precision", k), lprec, rtol=0, atol=1e-12)
        np.testing.assert_allclose(per_query_values(counts, "label_hit", k), lhit, rtol=0, atol=1e-12)
        if not np.isnan(lprec).all():
            assert metric_value(counts, "label_precision", k) == pytest.approx(np.nanmean(lprec), abs=1e-12)
            assert metric_value(counts, "label_hit", k) == pytest.approx(np.nanmean(lhit), abs=1e-12)
    # shallow depths only: the top max(ks) is partitioned out of the row, ties past it counted on the full row
    shallow = score(scores, targets, rel, (1, 2))
    for j, k in enumerate((1, 2)):
        np.testing.assert_allclose(shallow.label.precision[:, j], [_nan_or(x[k]) for x in want["lprec"]], atol=1e-12)
        np.testing.assert_allclose(shallow.label.hit[:, j], [_nan_or(x[k]) for x in want["lhit"]], atol=1e-12)
    # the NumPy entry point (rank_counts) gives the same label counts as the scorer
    direct = rank_counts(scores, targets, rel, ks).label
    np.testing.assert_array_equal(direct.precision, counts.label.precision)
    np.testing.assert_array_equal(direct.hit, counts.label.hit)


@pytest.mark.parametrize("seed", SEEDS)
def test_optimistic_and_pessimistic_are_the_best_and_worst_order(seed: int) -> None:
    scores, targets, _ = tiny_case(seed)
    n = scores.shape[1]
    want = oracle(scores, targets, None, ())
    counts = score(scores, targets)
    for policy, key in (("optimistic", "best"), ("pessimistic", "worst")):
        rank = np.array(want[key], dtype=float)
        np.testing.assert_array_equal(per_query_values(counts, "mean_rank", policy=policy), rank)
        np.testing.assert_allclose(per_query_values(counts, "mrr", policy=policy), 1 / rank, rtol=0, atol=1e-15)
        assert metric_value(counts, "median_rank", policy=policy) == np.median(rank)
        for k in range(1, n + 1):
            assert metric_value(counts, "recall", k, policy) == pytest.approx(np.mean(rank <= k), abs=1e-12)


@pytest.mark.parametrize("n", [1, 7, 50])
def test_constant_scores(n: int) -> None:
    m = 9
    scores = np.zeros((m, n), np.float32)
    targets = np.arange(m) % n
    classes = np.arange(n) % 3
    counts = score(scores, targets, ClassRelevance(classes), ks=tuple(sorted({1, n})))
    for k in sorted({1, max(1, n // 2), n}):
        assert metric_value(counts, "recall", k) == k / n
    assert metric_value(counts, "mean_rank") == (n + 1) / 2
    assert metric_value(counts, "median_rank") == (n + 1) / 2
    assert metric_value(counts, "mrr") == pytest.approx(sum(1 / r for r in range(1, n + 1)) / n, abs=1e-12)
    share = np.array([np.mean(classes == classes[t]) for t in targets])
    np.testing.assert_allclose(per_query_values(counts, "label_precision", n), share, atol=1e-15)
    np.testing.assert_allclose(per_query_values(counts, "label_precision", 1), share, atol=1e-15)
    np.testing.assert_array_equal(per_query_values(counts, "label_hit", n), np.ones(m))


def formula_oracle(scores: np.ndarray, targets: np.ndarray, rel: ClassRelevance, ks: tuple[int, ...]) -> tuple:
    """The documented formulas straight from full-row counts, one query and one k at a time (math.comb)."""
    m, n = scores.shape
    prec, hit = np.full((m, len(ks)), np.nan), np.full((m, len(ks)), np.nan)
    for q in range(m):
        t_q = int(targets[q])
        if not rel.labelled[t_q]:
            continue
        relevant = rel.rows(np.array([t_q]))[0]
        relevant[t_q] = True
        row = scores[q]
        for j, k in enumerate(ks):
            t = np.sort(row)[::-1][k - 1]
            c, g = int((row > t).sum()), int((row == t).sum())
            r, rg = int((relevant & (row > t)).sum()), int((relevant & (row == t)).sum())
            s = k - c
            prec[q, j] = (r + s * rg / g) / k
            hit[q, j] = 1.0 if r > 0 else 1 - math.comb(g - rg, s) / math.comb(g, s)
    return prec, hit


def test_label_counts_follow_the_formulas_at_scale_and_do_not_depend_on_chunking() -> None:
    rng = np.random.default_rng(7)
    m, n, ks = 60, 240, (1, 5, 10, 50, 100)
    scores = rng.integers(0, 40, size=(m, n)).astype(np.float32)  # ~6 ties per score value
    scores[:5] = 3.0  # whole rows tied: the tie at the 100th score spans the row
    targets = rng.integers(0, n, size=m)
    rel = ClassRelevance(rng.integers(-1, 4, size=n), drop_own=True)
    prec, hit = formula_oracle(scores, targets, rel, ks)
    one = score(scores, targets, rel, ks, chunk_rows=1)
    big = score(scores, targets, rel, ks, chunk_rows=10_000)
    for counts in (one, big):
        np.testing.assert_allclose(counts.label.precision, prec, rtol=0, atol=1e-12)
        np.testing.assert_allclose(counts.label.hit, hit, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(one.label.precision, big.label.precision)  # bit for bit
    np.testing.assert_array_equal(one.label.hit, big.label.hit)
    np.testing.assert_array_equal(one.label.labelled, big.label.labelled)
    plain = score(scores, targets)  # without labels: same rank counts, no label counts
    assert plain.label is None
    np.testing.assert_array_equal(plain.above, big.above)
    np.testing.assert_array_equal(plain.ties, big.ties)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_torch_scores_give_the_numpy_label_counts(dtype: torch.dtype) -> None:
    """Torch score matrices (a GPU chunk goes through the same conversion) keep their order and ties."""
    scores, targets, rel = tiny_case(5)
    want = rank_counts(scores, targets, rel, (1, 2, 3))
    got = rank_counts(torch.as_tensor(scores).to(dtype), targets, rel, (1, 2, 3))
    np.testing.assert_array_equal(got.above, want.above)
    np.testing.assert_array_equal(got.label.precision, want.label.precision)
    np.testing.assert_array_equal(got.label.hit, want.label.hit)


def test_unlabelled_queries_are_nan_and_counted() -> None:
    scores = np.array([[3, 1, 2, 0], [0, 1, 2, 3], [1, 1, 1, 1]], np.float32)
    targets = np.array([0, 3, 2])
    rel = ClassRelevance(np.array([0, 0, -1, 1]))  # study 2 has no labels
    counts = score(scores, targets, rel, ks=(1, 2))
    assert counts.label.labelled.tolist() == [True, True, False]
    assert labelled_queries(counts) == 2 and labelled_queries(score(scores, targets)) == 0
    assert np.isnan(counts.label.precision[2]).all() and np.isnan(counts.label.hit[2]).all()
    assert counts.label.precision[0].tolist() == [1.0, 0.5]  # top 2 = studies 0 (own) and 2 (unlabelled)
    assert counts.label.precision[1].tolist() == [1.0, 0.5]
    assert metric_value(counts, "label_precision", 2) == 0.5  # mean over the 2 labelled queries only
    nobody = score(scores, targets, ClassRelevance(np.full(4, -1)), ks=(1,))
    assert labelled_queries(nobody) == 0 and np.isnan(metric_value(nobody, "label_hit", 1))


def test_label_inputs_are_checked() -> None:
    scores, targets = np.zeros((2, 3), np.float32), np.array([0, 1])
    rel = ClassRelevance(np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="without label_ks"):
        score(scores, targets, rel)
    with pytest.raises(ValueError, match="without relevance"):
        score(scores, targets, None, ks=(1,))
    with pytest.raises(ValueError, match="outside 1..N=3"):
        score(scores, targets, rel, ks=(4,))
    with pytest.raises(ValueError, match="not k=2"):
        metric_value(score(scores, targets, rel, ks=(1,)), "label_hit", 2)
    with pytest.raises(ValueError, match="shape"):
        label_counts(scores, targets, ClassRelevance(np.array([0, 1])), (1,))


# ---- the registry -------------------------------------------------------------------------------------------

def test_builtins_in_order_and_parsing() -> None:
    assert available_metrics()[:6] == ["recall", "mrr", "mean_rank", "median_rank", "label_precision", "label_hit"]
    assert parse_metrics("all") == tuple(available_metrics())
    assert parse_metrics("mrr, recall,mrr") == ("mrr", "recall")
    assert parse_metrics(["median_rank", "recall,mrr"]) == ("median_rank", "recall", "mrr")
    assert get_metric("recall").title(10) == "Recall@10" and get_metric("mrr").title() == "MRR"
    with pytest.raises(ValueError, match="no metric named"):
        parse_metrics(" , ")


def test_unknown_metric_says_what_is_close() -> None:
    with pytest.raises(UnknownMetricError) as info:
        get_metric("mmr")
    text = str(info.value)
    assert "did you mean 'mrr'" in text and "Registered: recall, mrr, mean_rank" in text
    with pytest.raises(UnknownMetricError, match="did you mean 'recall'"):
        parse_metrics("recal,mrr")


def test_a_custom_metric_is_one_function_and_a_registration() -> None:
    def top1_or_tied(counts: RankCounts, k, policy: str) -> np.ndarray:
        return (counts.above == 0).astype(float)

    metric = Metric("top1_or_tied", "Top-1 (ties count)", per_k=False, higher_is_better=True,
                    per_query=top1_or_tied, aggregate="mean", unit="fraction", paired_test="sign-flip",
                    description="no candidate above the true report")
    register_metric(metric)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_metric(metric)
        counts = RankCounts(np.array([0, 0, 3, 1]), np.array([2, 0, 0, 0]), 10)
        assert metric_value(counts, "top1_or_tied") == 0.5
        got = compute_metrics(counts, "recall,top1_or_tied,label_hit", ks=(1, 5))
        assert got == {"recall": {1: recall_at_k(counts, [1])[1], 5: recall_at_k(counts, [5])[5]},
                       "top1_or_tied": 0.5}  # label_hit: no labels, so no entry
        assert "top1_or_tied" in parse_metrics("all")
    finally:
        reg._REGISTRY.pop("top1_or_tied", None)
    with pytest.raises(ValueError, match="lower-case"):
        Metric("Bad Name", "x", False, True, top1_or_tied, "mean", "fraction", "", "")
    with pytest.raises(ValueError, match="aggregate"):
        Metric("x", "x", False, True, top1_or_tied, "sum", "fraction", "", "")


def test_the_module_docstring_example_runs() -> None:
    example = reg.__doc__.split("registration::", 1)[1].split("\n\nafter which", 1)[0]
    namespace: dict = {}
    try:
        exec(compile(textwrap.dedent(example), "metric_registry docstring", "exec"), namespace)
        counts = RankCounts(np.array([0, 2]), np.array([0, 0]), 4)
        assert compute_metrics(counts, ["recall", "top1_or_tied"], (1,)) == {"recall": {1: 0.5}, "top1_or_tied": 0.5}
    finally:
        reg._REGISTRY.pop("top1_or_tied", None)


def test_label_metrics_without_labels_say_so() -> None:
    counts = RankCounts(np.array([0, 1]), np.array([0, 0]), 5)
    with pytest.raises(ValueError, match="needs findings labels"):
        metric_value(counts, "label_precision", 1)
    with pytest.raises(ValueError, match="needs a depth k"):
        metric_value(counts, "recall")
    with pytest.raises(ValueError, match="has no depth"):
        metric_value(counts, "mrr", 5)
    assert set(compute_metrics(counts, "all", ks=(1, 2))) == {"recall", "mrr", "mean_rank", "median_rank"}


# ---- paired comparison --------------------------------------------------------------------------------------

def test_paired_metric_p() -> None:
    rng = np.random.default_rng(0)
    rr = 1.0 / rng.integers(1, 50, size=200)
    p, _ = paired_metric_p("mrr", rr, rr)
    assert p == 1.0
    p, method = paired_metric_p("mrr", rr, rr / 3, n_perm=2000)  # candidate's true reports fell to 3x the rank
    assert p < 1e-3 and method.startswith("sign-flip")
    assert paired_metric_p("mrr", rr / 3, rr, n_perm=2000)[0] > 0.9  # the candidate is better: not significant

    ranks = rng.integers(1, 900, size=200).astype(float)
    worse = ranks + rng.integers(0, 40, size=200)  # higher rank = worse
    p, _ = paired_metric_p("mean_rank", ranks, worse, n_perm=2000)
    assert p < 1e-3
    assert paired_metric_p("median_rank", worse, ranks, n_perm=2000)[0] > 0.9
    # scaling leaves the test unchanged: ranks x 10 give the same p
    assert paired_metric_p("mean_rank", ranks * 10, worse * 10, n_perm=2000)[0] == pytest.approx(p, abs=1e-12)
    # hits in [0, 1] are not rescaled: the same p as the gate's paired cell
    ref_hits, cand_hits = rng.random(300) < 0.6, rng.random(300) < 0.5
    assert paired_metric_p("recall", ref_hits, cand_hits)[0] == paired_cell(ref_hits, cand_hits)["p_value"]


def test_paired_metric_p_drops_nan_rows() -> None:
    ref = np.array([1.0, np.nan, 0.5, 1.0, np.nan, 1.0, 1.0, 1.0])
    cand = np.array([0.0, 1.0, np.nan, 0.0, 0.0, 0.0, 0.0, 0.0])
    p, method = paired_metric_p("label_hit", ref, cand)
    assert method == "mcnemar-exact" and p == pytest.approx(0.5 ** 5)  # 5 complete rows, all lost
    assert paired_metric_p("label_hit", np.full(3, np.nan), np.ones(3)) == (1.0, "no-pairs")
    with pytest.raises(ValueError, match="equal length"):
        paired_metric_p("mrr", np.ones(3), np.ones(4))


# ---- persistence --------------------------------------------------------------------------------------------

def test_ranks_file_round_trip_with_label_counts(tmp_path) -> None:
    scores, targets, rel = tiny_case(3)
    with_labels = score(scores, targets, rel, ks=(1, 2))
    ids = [f"img{i}" for i in range(scores.shape[0])]
    clean, noisy = Condition("occlusion", 0.0), Condition("gaussian_noise", 3.0)
    save_ranks(tmp_path / "r.npz", {clean: with_labels, noisy: score(scores, targets)}, ids, {"seed": 0})
    with np.load(tmp_path / "r.npz") as npz:
        assert {"labelprec_0.0", "labelhit_0.0", "labelled_0.0", "labelks_0.0"} <= set(npz.files)
        assert not any(name.startswith("label") and name.endswith("@3.0") for name in npz.files)
    counts, got_ids, _ = load_ranks(tmp_path / "r.npz")
    assert got_ids == ids and counts[noisy].label is None
    label = counts[clean].label
    assert label.ks == (1, 2)
    np.testing.assert_array_equal(label.precision, with_labels.label.precision)
    np.testing.assert_array_equal(label.hit, with_labels.label.hit)
    np.testing.assert_array_equal(label.labelled, with_labels.label.labelled)
    # reordering queries for a paired comparison carries the label counts along
    index = np.arange(len(ids))[::-1]
    moved = _reorder(counts[clean], index)
    np.testing.assert_array_equal(moved.label.precision, label.precision[index])
    np.testing.assert_array_equal(moved.above, counts[clean].above[index])


def test_ranks_file_without_label_arrays_loads_as_before(tmp_path) -> None:
    ids = ["a", "b"]
    path = tmp_path / "old.npz"
    np.savez_compressed(path, image_ids=np.array(ids), meta=np.array("{}"), **{
        "above_0.25": np.array([0, 3]), "ties_0.25": np.array([1, 0]), "n_0.25": np.array(10)})
    counts, got_ids, meta = load_ranks(path)
    (cond, c), = counts.items()
    assert cond == Condition("occlusion", 0.25) and c.label is None and got_ids == ids and meta == {}
    assert c.above.tolist() == [0, 3] and c.ties.tolist() == [1, 0] and c.n_candidates == 10


def test_label_counts_validate_their_shapes() -> None:
    with pytest.raises(ValueError, match="must be"):
        LabelCounts((1, 2), np.zeros((3, 2)), np.zeros((3, 1)), np.ones(3, bool))


@pytest.mark.usefixtures("clean_cxr_env")
def test_the_cli_lists_metrics_and_the_gate_refuses_unknown_ones(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from cxr_robust.cli import EXIT_OK, main
    from cxr_robust.gate import GateOptions

    assert main(["metrics"]) == EXIT_OK
    out = capsys.readouterr().out
    for name in available_metrics():
        assert name in out
    assert out.count("paired test:") == len(available_metrics())
    assert main(["metrics", "--json"]) == EXIT_OK
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == available_metrics()
    assert GateOptions(metrics=("all",)).metrics == tuple(available_metrics())
    with pytest.raises(ValueError, match="did you mean 'mrr'"):
        GateOptions(metrics=("mmr",))
    with pytest.raises(ValueError, match="jaccard"):
        GateOptions(label_match="cosine")
    with pytest.raises(ValueError, match="uncertain_labels"):
        GateOptions(uncertain_labels="maybe")
