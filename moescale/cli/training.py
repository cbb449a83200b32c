"""``moescale train`` and ``moescale bench train``: train to a compute budget; measure MFU."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from moescale.cli.common import console, kv_table, parse_float, print_json
from moescale.laws.hparams import HyperparameterLaw

_EQ3_LR, _EQ3_B = (HyperparameterLaw.published().power_law(q).formula()
                   for q in ("learning_rate", "batch_tokens"))
_MAIN = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 prints


def train_cmd(
    config: Path = typer.Argument(..., help="Spec TOML (optional train table) or HF config.json."),
    compute: str = typer.Option(None, "--compute", help="Compute budget C in FLOPs (Ling M·D)."),
    # a str, not a Path: Path("") is ".", and an empty --out must be refused, not the cwd
    out: str = typer.Option(..., "--out", help="Run folder (re-running resumes it)."),
    seq_len: int = typer.Option(None, "--seq-len", help="Sequence length s (default 256)."),
    lr: str = typer.Option(None, "--lr", help="Peak LR (default [EL] Eq. 3: "
                           f"{_EQ3_LR})."),
    batch_tokens: int = typer.Option(
        None, "--batch-tokens",
        help=f"Global batch in tokens (default [EL] Eq. 3: {_EQ3_B}).",
    ),
    micro_batch: int = typer.Option(None, "--micro-batch", help="Sequences per micro-batch."),
    schedule: str = typer.Option(None, "--schedule", help="wsd (default) or cosine."),
    seed: int = typer.Option(None, "--seed", help="Initialisation and data-order seed."),
    device: str = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N."),
    dtype: str = typer.Option(None, "--dtype", help="auto, float32, bfloat16 (autocast)."),
    corpus: str = typer.Option(None, "--corpus", help="Corpus path (default: offline corpus)."),
    tokenizer: str = typer.Option(None, "--tokenizer", help="byte, bpe, bpe:<vocab>, file.json."),
    epochs: float = typer.Option(None, "--epochs", help="Passes over the data (>1 repeats)."),
    router: str = typer.Option(
        None, "--router", help="softmax_topk, softmax_topk_renorm, sigmoid_topk."
    ),
    aux_loss_coef: float = typer.Option(None, "--aux-loss-coef", help="Balancing loss (0.01)."),
    z_loss_coef: float = typer.Option(None, "--z-loss-coef", help="Router z-loss (0.001)."),
    aux_free_bias_rate: float = typer.Option(
        None, "--aux-free-bias-rate", help="Aux-loss-free bias rate u (0: off)."
    ),
    eval_every: str = typer.Option(None, "--eval-every", help="FLOPs between evaluations."),
    eval_batches: int = typer.Option(
        None, "--eval-batches", help="Validation micro-batches of each periodic evaluation."
    ),
    eval_tokens: int = typer.Option(
        None, "--eval-tokens",
        help="Final evaluation: validation tokens spread over the documents (default 65536; "
        "0 = the whole validation split).",
    ),
    log_every: int = typer.Option(None, "--log-every", help="Steps between metrics lines."),
    checkpoint_every: float = typer.Option(
        None, "--checkpoint-every", help="Seconds between checkpoints (default 300)."
    ),
    checkpoint_every_steps: int = typer.Option(
        None, "--checkpoint-every-steps", help="Steps between checkpoints."
    ),
    compile_: bool = typer.Option(
        None, "--compile/--no-compile", help="torch.compile (default: on CUDA)."
    ),
    fsdp: bool = typer.Option(None, "--fsdp", help="FSDP2 instead of DDP (CUDA, torchrun)."),
    threads: int = typer.Option(None, "--threads", help="CPU threads per rank."),
    progress: bool = typer.Option(None, "--progress/--no-progress", help="Progress bar."),
    ignore_memory_check: bool = typer.Option(
        False, "--ignore-memory-check",
        help="Train even when the memory estimate exceeds the RAM / GPU memory available.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result record as JSON."),
) -> None:
    """Train CONFIG for C FLOPs (D = C / M tokens) and write metrics, checkpoints, result."""
    from moescale.train import train
    from moescale.train.config import load_run_config

    overrides = {
        "compute": parse_float("compute", compute) if compute is not None else None,
        "seq_len": seq_len,
        "learning_rate": parse_float("lr", lr) if lr is not None else None,
        "batch_tokens": batch_tokens,
        "micro_batch_size": micro_batch,
        "schedule": schedule,
        "seed": seed,
        "device": device,
        "dtype": dtype,
        "corpus": corpus,
        "tokenizer": tokenizer,
        "epochs": epochs,
        "moe": {
            "router": router,
            "aux_loss_coef": aux_loss_coef,
            "z_loss_coef": z_loss_coef,
            "aux_free_bias_rate": aux_free_bias_rate,
        },
        "eval_every": parse_float("eval_every", eval_every) if eval_every is not None else None,
        "eval_batches": eval_batches,
        "eval_tokens": eval_tokens,
        "log_every": log_every,
        "checkpoint_every_s": checkpoint_every,
        "checkpoint_every_steps": checkpoint_every_steps,
        "compile": compile_,
        "fsdp": fsdp,
        "threads": threads,
    }
    spec, cfg = load_run_config(config, {**overrides, "eval_tokens": eval_tokens or None})
    if eval_tokens == 0:  # the whole validation split
        cfg = cfg.replace(eval_tokens=None)
    result = train(spec, cfg, out, progress=progress if _MAIN else False,
                   ignore_memory_check=ignore_memory_check)
    if _MAIN:
        if as_json:
            print_json(result)
        else:
            rows = [
                ("status", result["status"]),
                ("val loss (final evaluation)", _with_se(result)),
                ("val tokens evaluated (documents)",
                 f"{result['val_tokens']} ({result['evaluation']['docs']})"
                 if result.get("evaluation") else None),
                ("train loss (last 5% of steps)", result["train_loss_last5"]),
                ("steps", result["steps"]),
                ("tokens D", result["tokens"]),
                ("FLOPs M·D (requested C)", f"{result['flops']:.4e} ({result['compute']:.4e})"),
                ("FLOPs/token (Ling M)", result["flops_per_token"]),
                ("FLOPs/token (full: + head, router)", result["flops_per_token_full"]),
                ("learning rate", result["learning_rate"]),
                ("batch tokens", result["batch_tokens"]),
                ("wall time (s)", result["wall_time_s"]),
                ("tokens/s", result["tokens_per_s"]),
                ("MFU (Ling M / GEMM peak)", result["mfu"]),
            ]
            console.print(kv_table(str(out), rows))
    if result["status"] != "completed":
        print(f"error: run {result['status']}: {result['error']}", file=sys.stderr)
        raise typer.Exit(1)


def _with_se(result: dict) -> str | None:
    if result.get("loss") is None:
        return None
    se = result.get("val_loss_se")
    return f"{result['loss']:.4f} ± {se:.4f} (s.e.)" if se is not None else f"{result['loss']:.4f}"


def bench_train_cmd(
    config: Path = typer.Argument(
        None, help="Spec TOML / HF config (default: dense d_model 256, 4 layers, byte vocab)."
    ),
    moe: bool = typer.Option(False, "--moe", help="Default MoE preset: 64 experts, top-8."),
    steps: int = typer.Option(12, "--steps", help="Timed training steps."),
    rounds: int = typer.Option(4, "--rounds", help="Alternating peak/training rounds."),
    seq_len: int = typer.Option(256, "--seq-len", help="Sequence length."),
    micro_batch: int = typer.Option(32, "--micro-batch", help="Sequences per step."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda."),
    compile_: bool = typer.Option(None, "--compile/--no-compile", help="torch.compile."),
    threads: int = typer.Option(None, "--threads", help="CPU threads."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Training throughput and MFU against the GEMM peak measured in this process."""
    from moescale.errors import check_range
    from moescale.spec import load_spec
    from moescale.train.bench import bench_train

    for name, value in (("steps", steps), ("rounds", rounds), ("seq_len", seq_len),
                        ("micro_batch", micro_batch)):
        check_range(name, value, low=1, integer=True)
    spec = load_spec(config) if config is not None else None
    r = bench_train(spec, moe=moe, steps=steps, rounds=rounds, seq_len=seq_len,
                    micro_batch_size=micro_batch, device=device, compile=compile_,
                    threads=threads)
    if as_json:
        print_json(r)
        return
    rows = [
        ("model", r["spec"].get("name") or r["arch"]),
        ("tokens/s", r["tokens_per_s"]),
        ("model FLOP/s (Ling M)", r["model_flops_per_s"]),
        (f"GEMM peak FLOP/s ({r['peak_dtype']})", r["peak_flops_per_s"]),
        ("MFU (wall clock)", r["mfu"]),
        ("MFU (process CPU time)", r["mfu_cpu_time"]),
        ("threads / compile", f"{r['threads']} / {r['compile']}"),
    ]
    console.print(kv_table("bench train", rows))


def register(app: typer.Typer) -> None:
    from moescale.cli.bench import bench_app

    app.command("train")(train_cmd)
    bench_app.command("train")(bench_train_cmd)
