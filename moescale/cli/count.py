"""``moescale count``: exact parameter and FLOP accounting of an architecture."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from moescale.cli.common import console, kv_table, print_json, warn
from moescale.spec.hf_meta import count_path


def _native_rows(record: dict, seq_len: int) -> list[tuple[str, object]]:
    return [
        ("total params", record["total_params"]),
        ("active params", record["active_params"]),
        ("total params, non-embedding", record["total_params_non_embedding"]),
        ("active params, non-embedding", record["active_params_non_embedding"]),
        ("activation ratio A = E_a/E [EL]", record["activation_ratio"]),
        ("activation ratio (E_a+E_s)/(E+E_s)", record["activation_ratio_formal"]),
        ("parameter ratio N_a/N [EQ]", record["parameter_ratio"]),
        ("granularity G = 2d/d_expert [EL]", record["granularity"]),
        ("granularity G_fg = 4d/d_expert [FG]", record["granularity_fg"]),
        ("shared ratio S = E_s/(E_a+E_s)", record["shared_ratio"]),
        (f"FLOPs/token, Ling M (train, s={seq_len})", record["flops_per_token"]),
        ("FLOPs/token, 6·N_active", record["flops_per_token_6n"]),
        ("FLOPs/token, FG with router", record["flops_per_token_fg"]),
    ]


def _transformers_rows(record: dict) -> list[tuple[str, object]]:
    return [
        ("total params (exact)", record["total_params"]),
        ("total params, non-embedding (exact)", record["total_params_non_embedding"]),
        ("active params (approximate)", record["active_params"]),
        ("active params, non-embedding (approximate)", record["active_params_non_embedding"]),
        ("FLOPs/token, 6·N_active (approximate)", record["flops_per_token_6n"]),
    ]


def count(
    path: Path = typer.Argument(
        ..., help="HF config.json, a model folder holding one, or a moescale spec (TOML)."),
    seq_len: int = typer.Option(4096, "--seq-len", help="Sequence length s for Ling's M."),
    include_mtp: bool = typer.Option(False, "--include-mtp", help="Count MTP blocks too."),
    via: str = typer.Option(
        "auto", "--via",
        help="auto | moescale | transformers. 'transformers' builds the model on the meta "
             "device ([hf] extra): exact totals, approximate active params and FLOPs. "
             "'auto' falls back to it for HF model types moescale does not read."),
    verify: bool = typer.Option(
        False, "--verify",
        help="Cross-check moescale's counts against transformers' meta build per group "
             "([hf] extra); exit 1 if a group differs."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Parameters (total/active, with/without embeddings), A, G, S and FLOPs per token."""
    record, note = count_path(path, via=via, seq_len=seq_len, include_mtp=include_mtp,
                              verify=verify)
    if note:
        warn(note)
    if as_json:
        print_json(record)
    elif record.get("via") == "transformers":
        console.print(kv_table(f"{record['name'] or path} (via transformers)",
                               _transformers_rows(record)))
        groups = record["params_by_group"]
        console.print(kv_table("parameters by group (transformers names)",
                               [(k, v) for k, v in groups.items() if v or k == "total"]))
    else:
        console.print(kv_table(record["name"] or str(path), _native_rows(record, seq_len)))
        groups = record["params_by_group"]
        console.print(kv_table(
            "parameters by group", [(k, v) for k, v in groups.items() if v or k == "total"]))
    check = record.get("verify")
    if check is None:
        return
    if not as_json:
        rows = [(g, f"{r['moescale']:,} vs {r['transformers']:,}"
                 + ("" if r["moescale"] == r["transformers"] else "  DIFFERS"))
                for g, r in check["groups"].items() if r["moescale"] or r["transformers"]]
        console.print(kv_table("verify: moescale vs transformers (meta build)", rows))
    if not check["match"]:
        warn(f"groups differing from transformers: {', '.join(check['differ'])}")
        sys.exit(1)


def register(app: typer.Typer) -> None:
    app.command("count")(count)
