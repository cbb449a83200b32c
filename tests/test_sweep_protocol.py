"""The [EL] measurement protocol in sweeps: adaptive IsoFLOP ladders, the learning-rate
scan, replicates. A synthetic loss stands in for training (injected into the runner)."""

from __future__ import annotations

import json
import math
import zlib

import numpy as np
import pytest

from moescale.spec.accounting import flops_per_token
from moescale.spec.model_spec import ModelSpec
from moescale.sweep.config import parse_sweep_config
from moescale.sweep.execute import run_adaptive
from moescale.sweep.planner import plan_sweep
from moescale.sweep.store import open_store
from moescale.train.config import el_lr_opt

BUDGET = 1e13
BASE = {"sweep": {"name": "p", "budgets": [BUDGET], "seq_len": 64},
        "shape": {"head_dim": 8}, "ladder": {"d_step": 8, "aspect": 8, "max_extend": 3},
        "train": {"batch_tokens": 2048}, "dense": {}}


class SyntheticLoss:
    """``loss = 3 + 0.3·ln(M/M*)² + 0.05·ln(lr_mult/best)²`` with a known minimum."""

    def __init__(self, m_star: float, best_lr: float = 1.0) -> None:
        self.m_star, self.best_lr = m_star, best_lr
        self.calls: list[str] = []

    def __call__(self, payload: dict) -> dict:
        spec, cfg = ModelSpec.from_dict(payload["spec"]), payload["config"]
        self.calls.append(payload["name"])
        m = flops_per_token(spec, seq_len=cfg["seq_len"])
        lr0 = el_lr_opt(cfg["compute"])
        mult = (cfg["learning_rate"] or lr0) / lr0
        loss = (3.0 + 0.3 * math.log(m / self.m_star) ** 2
                + 0.05 * math.log(mult / self.best_lr) ** 2 + 1e-3 * cfg["seed"])
        return {"result": {"status": "completed", "loss": loss, "val_loss_se": 2e-3,
                           "tokens": 1000, "flops": cfg["compute"]}, "curve": []}


class BlockLoss(SyntheticLoss):
    """A shallow minimum (0.03·ln(M/M*)²) evaluated on 32 shared validation blocks whose
    difficulty varies a lot (sd 0.5): the blocks' noise is common to every run, so loss
    differences are resolved far better than any one loss (val_loss_se ≈ 0.09)."""

    def __call__(self, payload: dict) -> dict:
        out = super().__call__(payload)
        res = out["result"]
        res["loss"] = 3.0 + 0.1 * (res["loss"] - 3.0)
        rng = np.random.default_rng(7)  # the same blocks for every run
        common = rng.normal(0.0, 0.5, 32)
        own = np.random.default_rng(zlib.crc32(payload["name"].encode())).normal(0, 0.01, 32)
        blocks = res["loss"] + common - common.mean() + own - own.mean()
        res["eval_block_losses"] = blocks.tolist()
        res["val_loss_se"] = float(blocks.std(ddof=1) / np.sqrt(32))
        return out


def _doc(**tables) -> dict:
    return json.loads(json.dumps({**BASE, **tables}))


def _base_rungs(doc: dict) -> list[float]:
    plan = plan_sweep(parse_sweep_config(doc))
    return sorted(r.flops_per_token for r in plan.runs)


def test_an_unbracketed_ladder_is_extended_until_bracketed(tmp_path):
    doc = _doc()
    base = _base_rungs(doc)
    assert len(base) == 5
    # the minimum sits on the lowest base rung: nothing above it on the lower side
    fake = SyntheticLoss(m_star=base[0])
    sw = parse_sweep_config(doc)
    with open_store(tmp_path / "s.db") as st:
        out, plan = run_adaptive(sw, st, backend="inline", run_fn=fake)
        meta = json.loads(st.meta()["ladders"])
        recs, st_runs = st.records(), st.runs()
    assert not out.failed
    (lad,) = plan.ladders
    assert lad.status == "bracketed" and lad.open_side is None
    assert lad.extended == (2, 0)  # two rungs added below, none above
    assert len(lad.m) == 7 and max(lad.m) == base[-1] and min(lad.m) < base[0]
    assert meta[0]["status"] == "bracketed"
    # rungs below the minimum were trained after the base ladder, one round at a time
    assert len(fake.calls) == 7 == len(recs)
    assert sorted(r["rung"] for r in st_runs) == list(range(1, 8))
    assert {r["budget"] for r in recs} == {BUDGET}


def test_a_ladder_that_reaches_its_bound_is_reported_unbracketed(tmp_path):
    doc = _doc(ladder={"d_step": 8, "aspect": 8, "max_extend": 1})
    fake = SyntheticLoss(m_star=_base_rungs(doc)[0])
    with open_store(tmp_path / "s.db") as st:
        _, plan = run_adaptive(parse_sweep_config(doc), st, backend="inline", run_fn=fake)
    (lad,) = plan.ladders
    assert lad.status == "unbracketed" and lad.open_side == "lower"
    assert lad.extended == (1, 0) and len(lad.m) == 6


def test_a_centred_minimum_needs_no_extension(tmp_path):
    doc = _doc()
    base = _base_rungs(doc)
    fake = SyntheticLoss(m_star=base[2])
    with open_store(tmp_path / "s.db") as st:
        _, plan = run_adaptive(parse_sweep_config(doc), st, backend="inline", run_fn=fake)
    assert [(s.status, s.extended) for s in plan.ladders] == [("bracketed", (0, 0))]
    assert len(fake.calls) == 5


@pytest.mark.parametrize("with_blocks", [True, False])
def test_bracketing_uses_the_paired_se_of_shared_evaluation_blocks(tmp_path, with_blocks):
    doc = _doc()
    base = _base_rungs(doc)
    fake = BlockLoss(m_star=base[2])
    run_fn = fake if with_blocks else _without_blocks(fake)
    with open_store(tmp_path / "s.db") as st:
        _, plan = run_adaptive(parse_sweep_config(doc), st, backend="inline", run_fn=run_fn)
        se = [r["val_loss_se"] for r in st.records()]
    assert min(se) > 0.07  # each loss alone is uncertain by more than its neighbours' gap
    (lad,) = plan.ladders
    if with_blocks:  # paired differences resolve the centred minimum: no extension
        assert (lad.status, lad.extended) == ("bracketed", (0, 0))
    else:  # unpaired SEs cannot: the base ladder looks flat and is extended
        assert lad.extended != (0, 0)


def _without_blocks(fake):
    def run(payload):
        out = fake(payload)
        del out["result"]["eval_block_losses"]
        return out
    return run


def test_learning_rate_scan_picks_each_configurations_multiplier(tmp_path):
    doc = _doc(lr_scan={"budget": BUDGET},
               family=[{"kind": "activation", "name": "act", "n_experts": [8],
                        "m_target": "dense"}])
    sw = parse_sweep_config(doc)
    first = plan_sweep(sw)
    assert {r.kind for r in first.runs} == {"lr_scan"}  # ladders wait for the scan
    assert {s.status for s in first.ladders} == {"waiting"}
    base = _base_rungs(_doc())
    fake = SyntheticLoss(m_star=base[2], best_lr=0.5)
    with open_store(tmp_path / "s.db") as st:
        _, plan = run_adaptive(sw, st, backend="inline", run_fn=fake)
        recs = st.records()
    configs = {"dense", "moe-E2-k2-s1-G2", "moe-E8-k2-s1-G2"}
    assert plan.lr_multipliers == {c: 0.5 for c in configs}
    ladder = [r for r in recs if r["family"] != "lr_scan"]
    assert {r["config"] for r in ladder} == configs
    assert {r["lr_multiplier"] for r in ladder} == {0.5}
    for r in ladder:
        assert r["learning_rate"] == pytest.approx(0.5 * el_lr_opt(BUDGET))
    scan = [r for r in recs if r["family"] == "lr_scan"]
    # x0.5 won at the low end of x0.5/x1/x2, so x0.25 was added and lost: bracketed
    assert sorted(r["lr_multiplier"] for r in scan) == (
        [0.25] * 3 + [0.5] * 3 + [1.0] * 3 + [2.0] * 3)
    assert all(r["tags"].startswith("hparam;lr_scan") for r in scan)
    assert not any("learning-rate scan" in n for n in plan.notes)


@pytest.mark.parametrize(("best_lr", "added", "flagged"), [
    (1.0, [], False),               # interior best: the grid as given
    (3.0, [4.0, 8.0], False),       # high end: x4 added and wins, x8 added and loses
    (0.05, [0.25, 0.125], True),    # still at the low end after max_extend = 2
])
def test_learning_rate_scan_extends_until_its_best_is_bracketed(tmp_path, best_lr, added,
                                                                 flagged):
    sw = parse_sweep_config(_doc(lr_scan={"budget": BUDGET}))
    fake = SyntheticLoss(m_star=_base_rungs(_doc())[2], best_lr=best_lr)
    with open_store(tmp_path / "s.db") as st:
        _, plan = run_adaptive(sw, st, backend="inline", run_fn=fake)
        scan = sorted(r["lr_multiplier"] for r in st.records() if r["family"] == "lr_scan")
    assert scan == pytest.approx(sorted([0.5, 1.0, 2.0, *added]))
    expect = min(scan, key=lambda m: abs(math.log(m / best_lr)))
    assert plan.lr_multipliers == {"dense": pytest.approx(expect)}
    notes = [n for n in plan.notes if "learning-rate scan" in n]
    assert bool(notes) == flagged
    if flagged:
        assert "not bracketed" in notes[0] and "×0.125" in notes[0]


def test_seeds_plan_replicates_that_differ_only_in_seed():
    doc = _doc(sweep={**BASE["sweep"], "seeds": 3, "seed": 5})
    plan = plan_sweep(parse_sweep_config(doc))
    assert len(plan.runs) == 5 * 3
    by_rung: dict[int, list] = {}
    for r in plan.runs:
        by_rung.setdefault(r.rung, []).append(r)
    for runs in by_rung.values():
        assert sorted(r.seed for r in runs) == [5, 6, 7]
        assert sorted(r.config.seed for r in runs) == [5, 6, 7]
        assert len({r.key for r in runs}) == 3  # the seed is part of the run identity
        base = next(r for r in runs if r.seed == 5)
        assert all(r.name == base.name + (f"-seed{r.seed}" if r.seed != 5 else "")
                   for r in runs)
        rows = [{k: v for k, v in r.row().items() if k not in ("name", "key", "seed")}
                for r in runs]
        assert all(row == rows[0] for row in rows)
    # a family may override the sweep's replicate count
    doc["dense"] = {"seeds": 1}
    assert len(plan_sweep(parse_sweep_config(doc)).runs) == 5


def test_workers_zero_is_refused_not_defaulted(tmp_path):
    from moescale.errors import ConfigError
    from moescale.sweep.execute import run_sweep

    plan = plan_sweep(parse_sweep_config(_doc()))
    with open_store(tmp_path / "s.db") as st, pytest.raises(ConfigError, match="workers"):
        run_sweep(plan, st, backend="inline", workers=0)
