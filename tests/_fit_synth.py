"""Synthetic IsoFLOP sweeps from a known loss law with a known Efficiency Leverage."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from moescale.fit.runs import RunTable

BUDGETS = np.geomspace(1e15, 1e18, 5)
FULL_RATIO = {"dense": 1.2, "moe": 1.5}
"""flops_per_token_full / flops_per_token: EL in the full convention is 1.2/1.5 = 0.8 × EL."""


def frontier_loss(C, el=1.0):
    """True compute-optimal loss: dense L*(C) = 30·C^-0.06; an MoE with constant EL reaches
    the dense loss of EL·C at C, so its frontier ratio is EL at every C (Eq. 1)."""
    return 30.0 * (el * np.asarray(C, dtype=float)) ** -0.06


def synth_runs(rng, *, el_true=2.0, budgets=BUDGETS, n_rungs=7, block_sd=0.05, n_blocks=32,
               curv=0.05, seeds=1, seed_sd=0.0, control=False, noise=True) -> RunTable:
    """IsoFLOP ladders (parabola in ln M around M_opt = 0.1·C^0.5, random offset) for dense
    and one MoE configuration (plus an A = 1 control with EL 1.25 if ``control``)."""
    configs = [("dense", "dense", 1.0, 1.0, math.nan), ("moe", "moe-A0.125", el_true, 0.125, 2.0)]
    if control:
        configs.append(("moe", "moe-A1", 1.25, 1.0, 2.0))
    rows = []
    for arch, cfg, el, A, G in configs:
        for b in budgets:
            lopt = float(frontier_loss(b, el))
            mopt = 0.1 * b ** 0.5
            off = rng.uniform(-0.3, 0.3) if noise else 0.0
            for x in np.linspace(-1.2, 1.2, n_rungs) + off:
                for s in range(seeds):
                    mu = lopt + curv * x * x + (seed_sd * rng.standard_normal() if noise else 0)
                    blocks = mu + (block_sd * rng.standard_normal(n_blocks) if noise
                                   else np.zeros(n_blocks))
                    rows.append({
                        "run": f"{cfg}-{b:.3g}-{x:+.3f}-s{s}", "arch": arch, "config": cfg,
                        "compute": b, "budget": b, "flops_per_token": 0.1 * b ** 0.5 * math.exp(x),
                        "tokens": b / (mopt * math.exp(x)), "loss": float(blocks.mean()),
                        "val_loss_se": float(blocks.std(ddof=1) / math.sqrt(n_blocks)),
                        "eval_block_losses": json.dumps(blocks.tolist()),
                        "activation_ratio": A, "granularity": G, "seed": s,
                        "flops_per_token_full": 0.1 * b ** 0.5 * math.exp(x) * FULL_RATIO[arch],
                    })
    return RunTable.from_frame(pd.DataFrame(rows), source="synthetic")
