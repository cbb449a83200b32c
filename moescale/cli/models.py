"""``moescale bench moe-layer``: the MoE layer's forward+backward time against a dense SwiGLU
FFN of equal active FLOPs (and the per-expert reference loop), in the same process."""

from __future__ import annotations

import typer

from moescale.cli.bench import bench_app
from moescale.cli.common import console, kv_table, print_json


def moe_layer(
    experts: int = typer.Option(64, "--experts", help="Routed experts E."),
    top_k: int = typer.Option(8, "--top-k", help="Activated routed experts K."),
    shared: int = typer.Option(1, "--shared", help="Shared experts (width d_expert each)."),
    d_model: int = typer.Option(512, "--d-model", help="Model width D."),
    d_expert: int = typer.Option(128, "--d-expert", help="Expert width F."),
    tokens: int = typer.Option(8192, "--tokens", help="Tokens per call T."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16."),
    repeats: int = typer.Option(5, "--repeats", help="Timed rounds (median reported)."),
    threads: int | None = typer.Option(
        None, "--threads", help="torch.set_num_threads (default: PyTorch's, all cores)."
    ),
    no_loop: bool = typer.Option(False, "--no-loop", help="Skip the reference loop back-end."),
    hf: str = typer.Option(
        "", "--hf", help="Also time transformers' OLMoE block with these comma-separated "
        "experts implementations: eager, grouped_mm, batched_mm."),
    processes: int = typer.Option(
        1, "--processes", help="Repeat the whole measurement in this many fresh processes "
        "and report medians over them (with per-process figures)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Time MoE fwd+bwd vs a dense SwiGLU of width (top_k+shared)·d_expert; ratio = moe/dense."""
    from moescale.model.bench import bench_moe_layer

    record = bench_moe_layer(
        experts=experts, top_k=top_k, shared=shared, d_model=d_model, d_expert=d_expert,
        tokens=tokens, device=device, dtype=dtype, repeats=repeats, threads=threads,
        loop=not no_loop, hf=tuple(i.strip() for i in hf.split(",") if i.strip()),
        processes=processes,
    )
    if as_json:
        print_json(record)
        return
    rows = [
        ("MoE layer, grouped (ms)", record["moe_ms"]),
        (f"dense SwiGLU width {record['dense_width']} (ms)", record["dense_ms"]),
        ("MoE layer, reference loop (ms)", record["loop_ms"]),
        ("ratio MoE / dense", record["ratio"]),
        ("ratio loop / dense", record["loop_ratio"]),
        ("threads", record["threads"]),
    ]
    if "per_process" in record:
        rows.append((f"ratio MoE / dense per process ({record['processes']}, median above)",
                     " ".join(f"{r['ratio']:.3f}" for r in record["per_process"])))
    for impl, r in record.get("hf", {}).items():
        rows.append((f"transformers OLMoE block, {impl} (ms)", r["ms"]))
        rows.append((f"ratio OLMoE {impl} / dense width {record['hf_dense_width']}",
                     r["ratio"]))
    console.print(kv_table(
        f"moe-layer E={experts} K={top_k} S={shared} D={d_model} F={d_expert} T={tokens} "
        f"{device} {dtype}", rows))


def register(app: typer.Typer) -> None:
    """``moe-layer`` joins the ``bench`` group (registered by ``moescale.cli.bench``)."""
    bench_app.command("moe-layer")(moe_layer)
