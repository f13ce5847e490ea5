"""Simulation from cached outputs (sweep, Pareto budgets, AUC, ECE, selection) and evaluate_run on a tiny run."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import yaml

from exitlab.errors import CheckpointError, ConfigError, DataError
from exitlab.evaluation.policies import make_policy
from exitlab.evaluation.sweep import (
    Sweep,
    accuracy_at,
    auc,
    budget_table,
    budgeted_batch,
    chosen_at,
    chosen_auc,
    chosen_budget_table,
    ece,
    exit_indices,
    exits_per_exit_thresholds,
    pareto_frontier,
    score_thresholds,
    select,
    simulate,
)
from tests.conftest import tiny_overrides

# ---------------------------------------------------------------- brute-force references


def brute_frontier(cost, acc) -> list[tuple[float, float]]:
    pts = list(zip(cost, acc))
    keep = [p for p in pts if not any((q[0] <= p[0] and q[1] > p[1]) or (q[0] < p[0] and q[1] >= p[1]) for q in pts)]
    return sorted(set(keep))


def brute_budget(cost, acc, b, front=None):
    front = front or brute_frontier(cost, acc)
    if b < front[0][0]:
        return None
    lo = max(p for p in front if p[0] <= b)
    above = [p for p in front if p[0] > b]
    if not above:
        return lo[1]
    hi = min(above)
    return lo[1] + (hi[1] - lo[1]) * (b - lo[0]) / (hi[0] - lo[0])


def _curve(seed: int, T: int = 60, ties: bool = False):
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(T, generator=g, dtype=torch.float64) * 1.2 + 0.1
    acc = (cost.clamp(max=1) * 0.5 + torch.rand(T, generator=g, dtype=torch.float64) * 0.4)
    if ties:
        cost, acc = (cost * 10).round() / 10, (acc * 10).round() / 10
    return cost, acc


# ---------------------------------------------------------------- sweep


@pytest.mark.parametrize("exit_when", ["above", "below"])
def test_simulate_equals_a_loop_over_thresholds_and_samples(exit_when):
    g = torch.Generator().manual_seed(0)
    E, N, C = 5, 300, 4
    scores = torch.rand(E, N, generator=g)
    preds = torch.randint(0, C, (E, N), generator=g)
    labels = torch.randint(0, C, (N,), generator=g)
    costs = torch.tensor([1.0, 2.5, 3.0, 4.5, 6.0], dtype=torch.float64)
    t = torch.cat([torch.rand(40, generator=g, dtype=torch.float64), scores[:2, :5].flatten().double()])  # + ties
    sw = simulate(scores, preds, labels, costs, t, exit_when, backbone_flops=5.0)
    leaves = (lambda s, th: s >= th) if exit_when == "above" else (lambda s, th: s <= th)
    for i, th in enumerate(t.float().tolist()):
        ex = [next((j for j in range(E - 1) if leaves(scores[j, n].item(), th)), E - 1) for n in range(N)]
        assert exit_indices(scores, t[i:i + 1], exit_when)[0].tolist() == ex
        assert sw.accuracy[i].item() == pytest.approx(sum(preds[e, n] == labels[n] for n, e in enumerate(ex)) / N)
        assert sw.cost[i].item() == pytest.approx(sum(costs[e].item() for e in ex) / N)
        assert sw.exit_fractions[i].tolist() == pytest.approx([ex.count(j) / N for j in range(E)])
    assert torch.allclose(sw.fraction, sw.cost / 5.0)


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
def test_pareto_frontier_matches_brute_force(seed, ties):
    cost, acc = _curve(seed, ties=ties)
    c, a = pareto_frontier(cost, acc)
    assert list(zip(c.tolist(), a.tolist())) == brute_frontier(cost.tolist(), acc.tolist())
    assert (c[1:] > c[:-1]).all() and (a[1:] > a[:-1]).all()


@pytest.mark.parametrize("seed,ties", [(0, False), (3, True), (4, False)])
def test_budget_table_equals_brute_force_recomputation(seed, ties):
    cost, acc = _curve(seed, ties=ties)
    table = budget_table(cost, acc, budgets=(0.05, 0.25, 0.5, 0.75, 1.0, 2.0))
    for key, value in table.items():
        want = brute_budget(cost.tolist(), acc.tolist(), int(key) / 100)
        assert (value is None) == (want is None)
        if want is not None:
            assert value == pytest.approx(want, abs=1e-12)


def test_budget_interpolation_by_hand():
    cost = torch.tensor([0.2, 0.4, 0.6, 0.5, 1.1], dtype=torch.float64)
    acc = torch.tensor([0.5, 0.7, 0.65, 0.8, 0.9], dtype=torch.float64)  # (0.6, 0.65) is dominated by (0.5, 0.8)
    assert accuracy_at(cost, acc, 0.1) is None
    assert accuracy_at(cost, acc, 0.3) == pytest.approx(0.6)
    assert accuracy_at(cost, acc, 0.75) == pytest.approx(0.8 + 0.1 * 0.25 / 0.6)
    assert accuracy_at(cost, acc, 1.5) == pytest.approx(0.9)


def test_auc_is_the_integral_of_the_budget_curve():
    cost = torch.tensor([0.5, 1.0], dtype=torch.float64)
    acc = torch.tensor([0.6, 0.8], dtype=torch.float64)
    assert auc(cost, acc) == pytest.approx(0.5 * 0.7)  # 0 up to 0.5, then a line from 0.6 to 0.8
    cost, acc = _curve(5)
    grid = torch.linspace(0, 1, 4001, dtype=torch.float64)
    front = brute_frontier(cost.tolist(), acc.tolist())
    vals = [brute_budget(None, None, b, front) or 0.0 for b in grid.tolist()]
    assert auc(cost, acc) == pytest.approx(torch.trapezoid(torch.tensor(vals), grid).item(), abs=1e-3)


def test_ece_by_hand():
    logits = torch.log(torch.tensor([[[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]]))  # one exit, 3 samples
    labels = torch.tensor([0, 1, 1])  # right (conf 0.9), wrong (0.6), right (0.8)
    assert ece(logits, labels)[0] == pytest.approx((0.1 + 0.6 + 0.2) / 3)
    assert ece(logits, labels, bins=1)[0] == pytest.approx(abs(2 / 3 - (0.9 + 0.6 + 0.8) / 3))


def test_select_for_a_budget_and_for_an_accuracy():
    from exitlab.evaluation.sweep import Sweep

    frac = torch.tensor([0.3, 0.5, 0.5, 0.9], dtype=torch.float64)
    acc = torch.tensor([0.6, 0.7, 0.75, 0.8], dtype=torch.float64)
    sw = Sweep(torch.arange(4.0), acc, frac, frac, torch.zeros(4, 2))
    assert select(sw, budget=0.6) == 2 and select(sw, budget=0.2) is None
    assert select(sw, accuracy=0.7) == 2  # cheapest, and of the equally cheap the more accurate
    assert select(sw, accuracy=0.62) == 2 and select(sw, accuracy=0.8) == 3 and select(sw, accuracy=0.9) is None


# ---------------------------------------------------------------- evaluate_run on a tiny trained run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from exitlab.runs.config import load_config
    from exitlab.training.engine import train

    out = tmp_path_factory.mktemp("eval") / "run"
    train(load_config(None, tiny_overrides(regime="joint")), out)
    return out


def test_evaluate_run_writes_a_consistent_eval_json(run_dir):
    from exitlab import load
    from exitlab.evaluation.evaluate import evaluate_run
    from exitlab.runs.rundir import RunDir
    from exitlab.training.loop import evaluate

    res = evaluate_run(run_dir, policy="confidence", split="test")
    assert json.loads((run_dir / "eval.json").read_text()) == json.loads(json.dumps(res))
    model = load(run_dir)
    accs, n = evaluate(model, RunDir(run_dir).loader("test"))
    assert res["samples"] == n == 140
    assert [e["accuracy"] for e in res["exits"]] == pytest.approx(accs)
    assert [e["block"] for e in res["exits"]] == [0, 1, 2]
    assert [e["fraction"] for e in res["exits"]] == pytest.approx(
        [e["flops"] / res["costs"]["backbone_flops"] for e in res["exits"]])
    assert set(res["policies"]) == {"confidence", "entropy", "patience"}
    curve = res["policies"]["confidence"]
    assert res["chosen_on"] == "val" and len(curve["thresholds"]) > 100  # every distinct score, not a grid of 100
    for key, value in res["test_frontier"]["budget_table"].items():  # the optimistic table: a brute-force check
        want = brute_budget(curve["fraction"], curve["accuracy"], int(key) / 100)
        assert value == pytest.approx(want, abs=1e-12) if want is not None else value is None
    assert res["test_frontier"]["auc"] == pytest.approx(auc(torch.tensor(curve["fraction"]),
                                                            torch.tensor(curve["accuracy"])))
    for key, value in res["budget_table"].items():  # the headline: chosen on val, reported on test
        point = res["policies"]["confidence"]["chosen"][f"budget_{key}"]
        assert (value is None) == (point is None) and (value is None or value == point["accuracy"])
    # the threshold at t=0 sends everyone out at exit 0; the largest keeps (almost) everyone to the end
    assert curve["exit_fractions"][0] == [1.0, 0.0, 0.0]
    assert curve["accuracy"][0] == pytest.approx(res["exits"][0]["accuracy"])


def test_eval_json_has_failure_prediction_per_exit_for_the_max_softmax_and_every_policy(run_dir):
    from exitlab.evaluation.evaluate import cached_logits, evaluate_run
    from exitlab.evaluation.failure import aurc, mann_whitney
    from exitlab.evaluation.policies import make_policy

    res = evaluate_run(run_dir, split="test", write=False)
    logits, labels = cached_logits(run_dir, "test")
    conf, pred = logits.float().softmax(-1).max(-1)
    for k, e in enumerate(res["exits"]):
        right = pred[k] == labels
        assert e["aurc"] == pytest.approx(aurc(conf[k], right))
        assert e["auroc"] == pytest.approx(mann_whitney(conf[k][right], conf[k][~right]))
    scores, preds = make_policy("entropy").scores(logits)
    for k, f in enumerate(res["policies"]["entropy"]["failure"]):
        right = preds[k] == labels
        assert f["aurc"] == pytest.approx(aurc(-scores[k], right))  # low entropy = sure
    assert res["policies"]["confidence"]["failure"] == [{"auroc": e["auroc"], "aurc": e["aurc"]} for e in res["exits"]]


def test_selected_thresholds_come_from_val_and_are_reported_on_test(run_dir):
    from exitlab import load
    from exitlab.evaluation.evaluate import cached_logits, evaluate_run
    from exitlab.models.costs import exit_costs

    res = evaluate_run(run_dir, policy="entropy", split="test", target_accuracy=0.0, write=False)
    val, test = cached_logits(run_dir, "val"), cached_logits(run_dir, "test")
    pol, costs = make_policy("entropy"), exit_costs(load(run_dir))
    scores, _ = pol.scores(val[0])
    sv = simulate(*pol.scores(val[0]), val[1], costs.flops, score_thresholds(scores, "below"), "below",
                  backbone_flops=costs.backbone_flops)
    for key, sel in res["selected"].items():
        if key == "accuracy":
            assert sel["val_accuracy"] >= 0.0
            continue
        b = int(key.split("_")[1]) / 100
        ok = sv.fraction <= b
        if not ok.any():
            assert sel is None
            continue
        assert sel["val_accuracy"] == pytest.approx(sv.accuracy[ok].max().item())
        st = simulate(*pol.scores(test[0]), test[1], costs.flops, [sel["threshold"]], "below",
                      backbone_flops=costs.backbone_flops)
        assert sel["accuracy"] == pytest.approx(st.accuracy[0].item())
        assert sel["fraction"] == pytest.approx(st.fraction[0].item())


def test_logits_are_cached_and_recomputed_when_the_model_changes(run_dir, monkeypatch):
    from exitlab import load, save_pretrained
    from exitlab.evaluation import evaluate as ev
    from exitlab.runs import rundir

    first = ev.cached_logits(run_dir, "val")
    monkeypatch.setattr(rundir, "compute_logits", lambda *a, **k: pytest.fail("recomputed a valid cache"))
    again = ev.cached_logits(run_dir, "val")
    assert torch.equal(first[0], again[0])
    monkeypatch.undo()
    work = run_dir.parent / "changed"
    shutil.copytree(run_dir, work)
    model = load(work)
    with torch.no_grad():
        model.heads[0].fc.bias.add_(1.0)
    save_pretrained(model, work, extra={k: v for k, v in model.info.items() if k not in ("spec", "exitlab_format")})
    changed = ev.cached_logits(work, "val")
    assert not torch.equal(changed[0][0], first[0][0]) and torch.equal(changed[0][1:], first[0][1:])


def test_ztw_is_fitted_once_and_evaluated(run_dir):
    from exitlab.evaluation.evaluate import evaluate_run
    from exitlab.runs.rundir import RunDir

    ZTW_FILE = RunDir.ZTW
    res = evaluate_run(run_dir, policy="ztw", write=False)
    assert (run_dir / ZTW_FILE).is_file() and (run_dir / "logits_train.safetensors").is_file()
    assert "ztw" in res["policies"] and res["policy"] == "ztw"
    stamp = (run_dir / ZTW_FILE).stat().st_mtime_ns
    evaluate_run(run_dir, policy="ztw", write=False, policies=())
    assert (run_dir / ZTW_FILE).stat().st_mtime_ns == stamp


def test_bad_input_gets_clear_errors(run_dir, tmp_path):
    from exitlab.evaluation.evaluate import evaluate_run

    with pytest.raises(ConfigError, match="unknown policy 'nope'"):
        evaluate_run(run_dir, policy="nope")
    with pytest.raises(ConfigError, match=r"outside its range \[0, 1\]"):
        evaluate_run(run_dir, thresholds=[0.5, 1.2], write=False)
    with pytest.raises(ConfigError, match="unknown split"):
        evaluate_run(run_dir, split="dev")
    with pytest.raises(CheckpointError, match="holds no trained model"):
        evaluate_run(tmp_path)
    empty = tmp_path / "empty_test"
    shutil.copytree(run_dir, empty)
    cfg = yaml.safe_load((empty / "config.yaml").read_text())
    cfg["data"]["synthetic"]["n_test"] = 0
    (empty / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(DataError, match="test split is empty"):
        evaluate_run(empty, split="test")


# ---------------------------------------------------------------- honest headline tables


def _sweep(cost, acc) -> Sweep:
    cost, acc = torch.tensor(cost, dtype=torch.float64), torch.tensor(acc, dtype=torch.float64)
    T = len(cost)
    return Sweep(torch.arange(T, dtype=torch.float64), acc, cost, cost, torch.zeros(T, 2, dtype=torch.float64))


def test_the_headline_table_reports_the_validation_choice_not_the_test_frontier():
    """A constructed case: threshold 1 looks best on validation at the 50% budget, threshold 2 is best on test.
    The test frontier (optimistic) reports threshold 2's accuracy; the headline must report threshold 1's."""
    val = _sweep([0.2, 0.5, 0.5, 1.0], [0.60, 0.80, 0.70, 0.90])
    test = _sweep([0.2, 0.5, 0.5, 1.0], [0.62, 0.70, 0.85, 0.90])
    headline = chosen_budget_table(val, test, budgets=(0.5,))["50"]
    optimistic = budget_table(test.fraction, test.accuracy, budgets=(0.5,))["50"]
    assert headline == pytest.approx(0.70) and optimistic == pytest.approx(0.85)
    # between validation frontier points the validation cost meets the budget exactly, test is mixed alike
    point = chosen_at(val, test, 0.75)
    assert point["val_fraction"] == pytest.approx(0.75) and point["mix"] == pytest.approx(0.5)
    assert point["accuracy"] == pytest.approx((0.70 + 0.90) / 2)
    assert chosen_at(val, test, 0.1) is None
    # the AUC integrates exactly that curve: 0 below 0.2, then linear pieces of test accuracy
    want = 0.5 * (0.62 + 0.70) * 0.3 + 0.5 * (0.70 + 0.90) * 0.5
    assert chosen_auc(val, test) == pytest.approx(want)


def test_score_thresholds_reach_the_brute_force_frontier_of_over_confident_logits():
    """Over-confident logits crowd every confidence near 1, where an even grid of 100 has almost no points."""
    g = torch.Generator().manual_seed(3)
    E, N, C = 4, 3000, 100
    labels = torch.randint(0, C, (N,), generator=g)
    logits = torch.randn(E, N, C, generator=g) * 0.5
    right = torch.rand(E, N, generator=g) < torch.tensor([0.3, 0.5, 0.65, 0.75])[:, None]
    logits[right, labels.expand(E, N)[right]] += 15.0  # a correct prediction: confidence about 1 - 3e-5
    logits[~right, torch.randint(0, C, (E, N), generator=g)[~right]] += 12.0  # a wrong one: about 1 - 6e-4
    pol = make_policy("confidence")
    scores, preds = pol.scores(logits)
    costs = torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=torch.float64)

    def frontier_at(t, b):
        sw = simulate(scores, preds, labels, costs, t, "above")
        return accuracy_at(sw.fraction, sw.accuracy, b)

    every = torch.unique(scores[:-1].double().cummax(0).values.flatten())  # brute force: every distinct value
    every = torch.cat([every, every[-1:] + 1e-6])
    for b in (0.4, 0.6, 0.8):
        brute = frontier_at(every, b)
        assert frontier_at(score_thresholds(scores), b) == pytest.approx(brute, abs=1e-12)  # all distinct: exact
        assert frontier_at(score_thresholds(scores, max_n=256), b) == pytest.approx(brute, abs=5e-3)  # quantiles
    assert scores[:-1].min() > 0.99  # every confidence is above the grid's second-to-last point
    grid = pol.default_thresholds(E, C, 100)
    assert frontier_at(every, 0.6) - frontier_at(grid, 0.6) > 0.03  # the even grid misses the operating points


def test_budgeted_batch_meets_the_budget_on_validation_with_a_geometric_profile():
    g = torch.Generator().manual_seed(0)
    E, N = 4, 2000
    scores = torch.rand(E, N, generator=g)
    labels = torch.zeros(N, dtype=torch.long)
    preds = (torch.rand(E, N, generator=g) < torch.tensor([0.5, 0.6, 0.7, 0.8])[:, None]).long() * 0  # all right
    preds[torch.rand(E, N, generator=g) < 0.3] = 1
    costs = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    res = budgeted_batch(scores, preds, labels, scores, preds, labels, costs, 0.6, backbone_flops=4.0)
    assert res["val_fraction"] <= 0.6 + 1e-9 and res["val_fraction"] > 0.55  # the budget, met from below
    counts = res["exit_counts"]
    p = res["p"]
    share = torch.tensor([p**k for k in range(E)]) / sum(p**k for k in range(E))
    assert counts == pytest.approx((share * N).round().tolist(), abs=2)  # the geometric profile
    assert budgeted_batch(scores, preds, labels, scores, preds, labels, costs, 0.1, backbone_flops=4.0) is None


def test_simulate_with_per_sample_costs_equals_charging_each_sample_its_own_exit():
    """Text charges every sample its own cost ``[E, N]``: the prefix-sum simulation equals a plain loop."""
    g = torch.Generator().manual_seed(3)
    E, N = 4, 301
    scores = torch.rand(E, N, generator=g)
    preds, labels = torch.randint(0, 7, (E, N), generator=g), torch.randint(0, 7, (N,), generator=g)
    costs = (torch.rand(E, N, generator=g, dtype=torch.float64) * 5).cumsum(0)  # [E, N], rising along the exits
    t = torch.linspace(0, 1, 23, dtype=torch.float64)
    sw = simulate(scores, preds, labels, costs, t)
    e = exit_indices(scores, t)  # [T, N]
    rows = torch.arange(N)
    want_cost = torch.stack([costs[ei, rows].mean() for ei in e])
    want_acc = torch.stack([(preds[ei, rows] == labels).double().mean() for ei in e])
    torch.testing.assert_close(sw.cost, want_cost, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sw.accuracy, want_acc, rtol=0, atol=0)
    # the same costs for every sample give the per-exit form's answer
    flat = costs[:, :1].expand(E, N).contiguous()
    torch.testing.assert_close(simulate(scores, preds, labels, flat, t).cost,
                               simulate(scores, preds, labels, costs[:, 0], t).cost, rtol=1e-12, atol=1e-12)


def test_budgeted_batch_charges_validation_and_test_samples_their_own_costs():
    g = torch.Generator().manual_seed(4)
    E, Nv, Nt = 3, 200, 150
    vs, ts = torch.rand(E, Nv, generator=g), torch.rand(E, Nt, generator=g)
    vp, tp = torch.randint(0, 5, (E, Nv), generator=g), torch.randint(0, 5, (E, Nt), generator=g)
    vy, ty = torch.randint(0, 5, (Nv,), generator=g), torch.randint(0, 5, (Nt,), generator=g)
    vc = (torch.rand(E, Nv, generator=g, dtype=torch.float64) + 0.5).cumsum(0)
    tc = (torch.rand(E, Nt, generator=g, dtype=torch.float64) + 0.5).cumsum(0)
    vb, tb = float(vc[-1].mean()), float(tc[-1].mean())
    got = budgeted_batch(vs, vp, vy, ts, tp, ty, tc, 0.6, backbone_flops=tb, val_costs=vc, val_backbone_flops=vb)
    t = torch.tensor([math.inf if x is None else x for x in got["thresholds"]])
    t[-1] = -math.inf
    ev, et = exits_per_exit_thresholds(vs, t), exits_per_exit_thresholds(ts, t)
    assert got["val_fraction"] == pytest.approx(float(vc[ev, torch.arange(Nv)].mean()) / vb, rel=1e-12)
    assert got["fraction"] == pytest.approx(float(tc[et, torch.arange(Nt)].mean()) / tb, rel=1e-12)
    assert got["val_fraction"] <= 0.6 + 1e-9
