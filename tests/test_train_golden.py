"""Golden losses: a fixed tiny dense and a tiny MoE run of 20 steps, pinned in a file.

Any change to the model's or the trainer's numerics (initialisation, attention, routing,
losses, optimizer, schedule, data order, split, evaluation) moves these numbers. The file
``tests/golden/train_losses.json`` is updated only deliberately::

    MOESCALE_UPDATE_GOLDEN=1 python -m pytest tests/test_train_golden.py

with the reason in the commit message. The corpus is generated here (seeded, so it does
not depend on the Python version's standard library); one CPU thread, deterministic
algorithms. The tolerance (2e-5 nats) admits the last-bit differences of another CPU's
kernels and nothing a real change makes.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from moescale.spec import ModelSpec, flops_per_token
from moescale.train import TrainConfig, train

GOLDEN = Path(__file__).parent / "golden" / "train_losses.json"
TOL = 2e-5
SPECS = {
    "dense": ModelSpec(name="golden-dense", d_model=32, n_layers=2, n_heads=2, vocab_size=257,
                       d_ffn=64),
    "moe": ModelSpec(name="golden-moe", d_model=32, n_layers=2, n_heads=2, vocab_size=257,
                     n_experts=8, top_k=2, n_shared_experts=1, d_expert=16),
}
_WORD_TEXT = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when if "
    "so no will more can out up who said what its into them than"
)
WORDS = _WORD_TEXT.split()


def _corpus(root: Path) -> Path:
    rng = random.Random(20250723)
    root.mkdir(parents=True)
    for i in range(64):
        lines = []
        for _ in range(rng.randint(8, 40)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
            lines.append(" ".join(words).capitalize() + rng.choice(".?!,;"))
        (root / f"doc{i:03d}.txt").write_text("\n".join(lines) + "\n")
    return root


def _run(name: str, tmp_path: Path) -> dict:
    spec = SPECS[name]
    m = flops_per_token(spec, convention="ling", seq_len=32)
    cfg = TrainConfig(compute=20 * 256 * m, seq_len=32, batch_tokens=256, learning_rate=3e-3,
                      threads=1, deterministic=True, device="cpu", log_every=1, n_evals=2,
                      eval_batches=2, eval_tokens=4096, eval_block_tokens=512,
                      corpus=str(_corpus(tmp_path / "corpus")), val_fraction=0.1,
                      cache_dir=str(tmp_path / "tokens"), checkpoint_every_s=None)
    result = train(spec, cfg, tmp_path / "run")
    assert result["status"] == "completed" and result["steps"] == 20
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    return {
        "train_loss": [x["train_loss"] for x in lines],
        "aux_loss": [x["aux_loss"] for x in lines],
        "loss": result["loss"],
        "eval_block_losses": result["eval_block_losses"],
        "val_loss_periodic": result["val_loss_periodic"],
    }


@pytest.mark.parametrize("name", sorted(SPECS))
def test_golden_losses(name, tmp_path):
    got = _run(name, tmp_path)
    if os.environ.get("MOESCALE_UPDATE_GOLDEN") == "1":
        data = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
        data["_comment"] = ("Pinned by tests/test_train_golden.py. Update only deliberately "
                            "(MOESCALE_UPDATE_GOLDEN=1), with the reason in the commit message.")
        data[name] = got
        GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        pytest.skip("golden file updated")
    want = json.loads(GOLDEN.read_text())[name]
    assert len(got["train_loss"]) == len(want["train_loss"]) == 20
    for key in ("train_loss", "aux_loss", "eval_block_losses"):
        for i, (a, b) in enumerate(zip(got[key], want[key], strict=True)):
            assert abs(a - b) <= TOL, f"{name} {key}[{i}]: {a!r} != golden {b!r}"
    for key in ("loss", "val_loss_periodic"):
        assert abs(got[key] - want[key]) <= TOL, f"{name} {key}: {got[key]!r} != {want[key]!r}"
