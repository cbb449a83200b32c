"""``moescale predict`` (el, hparams, allocation, loss, optimum, dense-equivalent) and ``design``.

Each command parses its options (numbers as strings, so a bad value is one line and
exit 2), calls one function of :mod:`moescale.laws.predict` / :mod:`moescale.laws.design`
and prints a table or, with ``--json``, one JSON object. Inputs outside a law's fitted
range give a warning on stderr naming the range.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from moescale.cli.common import console, fmt_num, kv_table, parse_float, print_json, warn
from moescale.errors import ConfigError
from moescale.laws.joint import JOINT_VOCAB
from moescale.spec.presets import LING2_VOCAB

predict_app = typer.Typer(
    name="predict",
    help="Predictions of the published laws: EL, hyperparameters, allocation, loss.",
    no_args_is_help=True,
)

_LAW_HELP = "EL law name (registry): ling2025."


def _num(name: str, text: str | None) -> float | None:
    return None if text is None else parse_float(name, text)


def _int(name: str, text: str | None) -> int | None:
    value = _num(name, text)
    if value is not None and not float(value).is_integer():
        raise ConfigError(f"{name!r} must be an integer; got {text!r}")
    return None if value is None else int(value)


def _warn_record(rec: dict) -> None:
    for message in rec.get("range_warnings", []):
        warn(f"law {rec.get('law')!r}: {message}")
    for message in rec.get("notes", []):
        warn(message)


def _resolve_el(
    activation_ratio: str | None, granularity: str | None, compute: str | None,
    config: Path | None, tokens: str | None, seq_len: int,
) -> tuple[float, float, float, float | None, dict | None]:
    """(A, G, C, D, extra inputs) from explicit flags or from ``--config`` + ``--tokens``."""
    from moescale.laws.predict import el_inputs_from_spec
    from moescale.spec import load_spec

    D = _num("tokens", tokens)
    if config is not None:
        given = [n for n, v in (("--activation-ratio", activation_ratio),
                                ("--granularity", granularity), ("--compute", compute)) if v]
        if given:
            raise ConfigError(f"--config derives A, G and C; do not also give {', '.join(given)}")
        if D is None:
            raise ConfigError("--config needs --tokens D (C = Ling M x D)")
        inputs = el_inputs_from_spec(load_spec(config), D, seq_len=seq_len)
        inputs["config"] = str(config)
        return (inputs["activation_ratio"], inputs["granularity"], inputs["compute"], D, inputs)
    missing = [n for n, v in (("--activation-ratio", activation_ratio),
                              ("--granularity", granularity), ("--compute", compute)) if v is None]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)} (or give --config PATH --tokens D)")
    return (parse_float("activation_ratio", activation_ratio),
            parse_float("granularity", granularity), parse_float("compute", compute), D, None)


_A = typer.Option(None, "--activation-ratio", "-A", help="A = E_a/E (routed experts only).")
_G = typer.Option(None, "--granularity", "-G", help="G = 2*d_model/d_expert ([EL] convention).")
_C = typer.Option(None, "--compute", "-C", help="Training FLOPs C = Ling M x D.")
_CONFIG = typer.Option(None, "--config", help="HF config.json or moescale TOML spec.")
_TOKENS = typer.Option(None, "--tokens", "-D", help="Training tokens D.")
_SEQ = typer.Option(4096, "--seq-len", help="Sequence length s of Ling's M (with --config).")
_JSON = typer.Option(False, "--json", help="Print one JSON object.")


def _el_command(show):
    """A command with the shared EL flags: resolve (A, G, C, D) from flags or a config,
    predict EL, warn on range, then ``show(A, G, C, rec, as_json)``; used by ``predict el``
    and ``predict dense-equivalent``."""

    def command(
        activation_ratio: str | None = _A,
        granularity: str | None = _G,
        compute: str | None = _C,
        config: Path | None = _CONFIG,
        tokens: str | None = _TOKENS,
        seq_len: int = _SEQ,
        law: str = typer.Option("ling2025", "--law", help=_LAW_HELP),
        as_json: bool = _JSON,
    ) -> None:
        from moescale.laws.predict import predict_el

        A, G, C, D, inputs = _resolve_el(activation_ratio, granularity, compute, config, tokens,
                                         seq_len)
        rec = predict_el(A, G, C, law=law, tokens=D, inputs=inputs)
        _warn_record(rec)
        show(A, G, C, rec, as_json)

    command.__name__, command.__doc__ = show.__name__, show.__doc__
    return command


@predict_app.command("el")
@_el_command
def el_cmd(A: float, G: float, C: float, rec: dict, as_json: bool) -> None:
    """Efficiency Leverage of an MoE ([EL] Eq. 13) and its equivalent dense model."""
    if as_json:
        print_json(rec)
        return
    eq = rec["dense_equivalent"]
    console.print(kv_table(f"Efficiency Leverage, law {rec['law']}", [
        ("activation ratio A = E_a/E", A),
        ("granularity G = 2d/d_expert", G),
        ("compute C (Ling M x D)", C),
        ("EL = C_dense / C_moe", rec["el"]),
        ("inside fitted range", str(rec["in_fitted_range"])),
        ("EL = 1 break-even compute at this G", rec["break_even_compute"]),
        ("optimal granularity G*", rec["optimal_granularity"]),
        ("dense compute matching it (C x EL)", eq["dense_compute"]),
        (f"tokens D ({eq['tokens_source']})", eq["tokens"]),
        ("dense Ling M at the same D", eq["dense_flops_per_token"]),
        ("dense compute-optimal M for C x EL", eq["dense_optimal_flops_per_token"]),
        ("dense compute-optimal D for C x EL", eq["dense_optimal_tokens"]),
    ]))


@predict_app.command("dense-equivalent")
@_el_command
def dense_equivalent_cmd(A: float, G: float, C: float, rec: dict, as_json: bool) -> None:
    """The dense model an MoE matches: compute C x EL, and its size at the same tokens."""
    eq = {**rec["dense_equivalent"], "in_fitted_range": rec["in_fitted_range"]}
    if as_json:
        print_json(eq)
        return
    console.print(kv_table("equivalent dense model ([EL] Eq. 1 / Eq. 13 / Table 1)", [
        (k, v if not isinstance(v, bool) else str(v)) for k, v in eq.items()
    ]))


@predict_app.command("hparams")
def hparams_cmd(
    compute: str | None = _C,
    config: Path | None = _CONFIG,
    tokens: str | None = _TOKENS,
    seq_len: int = _SEQ,
    as_json: bool = _JSON,
) -> None:
    """Optimal peak learning rate and batch size in tokens ([EL] Eq. 3, MoE)."""
    from moescale.laws.predict import predict_hparams
    from moescale.spec import flops_per_token, load_spec

    if config is not None:
        if compute is not None:
            raise ConfigError("give either --compute or --config with --tokens, not both")
        D = _num("tokens", tokens)
        if D is None:
            raise ConfigError("--config needs --tokens D (C = Ling M x D)")
        if D <= 0:
            raise ConfigError(f"'tokens' must be a number in (0, inf]; got {D}")
        m = flops_per_token(load_spec(config), seq_len=seq_len)
        inputs = {"config": str(config), "flops_per_token": m, "tokens": D, "seq_len": seq_len,
                  "compute": m * D}
        C = m * D
    else:
        if compute is None:
            raise ConfigError("missing --compute (or give --config PATH --tokens D)")
        if tokens is not None:
            raise ConfigError("--tokens goes with --config; with --compute it is not used")
        C = parse_float("compute", compute)
        inputs = None
    rec = predict_hparams(C, inputs=inputs)
    if as_json:
        print_json(rec)
        return
    rows = [("compute C", rec["compute"]), ("learning rate", rec["learning_rate"]),
            ("batch (tokens)", rec["batch_tokens"])]
    if rec["batch_sequences"]:
        rows.append((f"batch (sequences of {seq_len})", rec["batch_sequences"]))
    console.print(kv_table("[EL] Eq. 3 hyperparameters (MoE)", rows))


@predict_app.command("allocation")
def allocation_cmd(
    compute: str = typer.Option(..., "--compute", "-C", help="Training FLOPs C = Ling M x D."),
    arch: str = typer.Option("moe", "--arch", help="dense or moe ([EL] Table 1 row)."),
    as_json: bool = _JSON,
) -> None:
    """Compute-optimal Ling M (FLOPs/token) and tokens D ([EL] Table 1)."""
    from moescale.laws.predict import predict_allocation

    rec = predict_allocation(parse_float("compute", compute), arch)
    if as_json:
        print_json(rec)
        return
    console.print(kv_table(f"[EL] Table 1 compute-optimal allocation ({arch})", [
        ("compute C", rec["compute"]), ("Ling M (FLOPs/token)", rec["flops_per_token"]),
        ("tokens D", rec["tokens"])]))


@predict_app.command("loss")
def loss_cmd(
    law: str = typer.Option("fg", "--law", help="fg, fg-dense, fg-moe_e64_validation, "
                            "fg-moe_e16, joint, chinchilla, chinchilla-tex, epoch, epoch-huber."),
    params: str | None = typer.Option(None, "--params", "-N", help="N in the law's convention: "
                                      "FG total non-embedding; JOINT active incl. embeddings; "
                                      "Chinchilla dense total."),
    tokens: str | None = _TOKENS,
    granularity_fg: str | None = typer.Option(None, "--granularity-fg",
                                              help="G_fg = d_ffn/d_expert = 4d/d_expert (FG)."),
    experts: str | None = typer.Option(None, "--experts", "-E", help="Experts E (JOINT)."),
    config: Path | None = _CONFIG,
    as_json: bool = _JSON,
) -> None:
    """Loss of a published loss law at N, D (and G_fg or E), or from a config + tokens."""
    from moescale.laws.predict import predict_loss
    from moescale.spec import load_spec

    D = _num("tokens", tokens)
    if D is None:
        raise ConfigError("missing --tokens D")
    spec = load_spec(config) if config is not None else None
    rec = predict_loss(law, params=_num("params", params), tokens=D,
                       granularity_fg=_num("granularity_fg", granularity_fg),
                       experts=_num("experts", experts), spec=spec)
    _warn_record(rec)
    if as_json:
        print_json(rec)
        return
    rows = [("loss", rec["loss"]), (f"N ({rec['N_convention']})", rec["params"]),
            ("tokens D", rec["tokens"])]
    for key in ("granularity_fg", "experts"):
        if key in rec:
            rows.append((key, rec[key]))
    rows.append(("inside fitted range", str(rec["in_fitted_range"])))
    console.print(kv_table(f"loss, law {rec['law']}", rows))


@predict_app.command("optimum")
def optimum_cmd(
    compute: str = typer.Option(..., "--compute", "-C", help="FLOPs in the law's convention."),
    law: str = typer.Option("fg", "--law", help="fg, joint, chinchilla, epoch, ..."),
    experts: str | None = typer.Option(None, "--experts", "-E", help="Experts E (joint)."),
    as_json: bool = _JSON,
) -> None:
    """Compute-optimal allocation of a loss law (FG with G_fg, JOINT per E, Chinchilla)."""
    from moescale.laws.predict import predict_optimum

    rec = predict_optimum(law, parse_float("compute", compute),
                          experts=_num("experts", experts))
    if as_json:
        print_json(rec)
        return
    console.print(kv_table(f"compute optimum, law {rec['law']}",
                           [(k, v) for k, v in rec.items() if isinstance(v, (int, float))]))


def design_cmd(
    compute: str = typer.Option(..., "--compute", "-C", help="Training FLOPs (law convention)."),
    max_total_params: str | None = typer.Option(None, "--max-total-params",
                                                help="Limit on total params (embeddings incl.)."),
    max_active_params: str | None = typer.Option(None, "--max-active-params",
                                                 help="Limit on active params (embeddings incl.)."),
    memory_gb: str | None = typer.Option(None, "--memory-gb",
                                         help="Training-state limit, 16 bytes/param, GB=1e9."),
    law: str = typer.Option("ling2025", "--law", help="ling2025 (max EL), fg or joint (min loss)."),
    top: str = typer.Option("5", "--top", help="Number of candidates."),
    seq_len: int = typer.Option(4096, "--seq-len", help="Sequence length of Ling's M."),
    vocab_size: str | None = typer.Option(None, "--vocab-size", help="Vocabulary (default: "
                                          f"{LING2_VOCAB:,} for ling2025/fg, {JOINT_VOCAB:,} "
                                          "for joint)."),
    allow_extrapolation: bool = typer.Option(False, "--allow-extrapolation",
                                             help="ling2025: allow A, G outside the fitted grid."),
    as_json: bool = _JSON,
) -> None:
    """Search buildable MoE architectures for a compute budget under a law."""
    from moescale.laws.design import design

    cands = design(
        parse_float("compute", compute), law=law,
        max_total_params=_num("max_total_params", max_total_params),
        max_active_params=_num("max_active_params", max_active_params),
        memory_gb=_num("memory_gb", memory_gb), top=_int("top", top), seq_len=seq_len,
        vocab_size=_int("vocab_size", vocab_size), allow_extrapolation=allow_extrapolation,
    )
    if cands and not cands[0]["in_fitted_range"]:
        for message in cands[0]["range_warnings"]:
            warn(f"best candidate, law {law!r}: {message}")
    if as_json:
        print_json({"law": law, "compute": float(parse_float("compute", compute)),
                    "candidates": cands})
        return
    score = "predicted_el" if law == "ling2025" else "predicted_loss"
    g_key, g_name = ("granularity_fg", "G_fg") if law == "fg" else ("granularity", "G")
    table = Table(title=f"design, law {law}, compute {fmt_num(float(compute))}",
                  box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    for col in ("E/k/s", "d x L", "d_exp", "A", g_name, "total/act", "tokens",
                "lr", "batch", "EL" if law == "ling2025" else "loss"):
        table.add_column(col, justify="right")
    for c in cands:  # best first
        g = c[g_key]
        table.add_row(
            f"{c['experts']}/{c['top_k']}/{c['shared_experts']}",
            f"{c['d_model']}x{c['layers']}", str(c["d_expert"] or c["d_ffn"]),
            f"{c['activation_ratio']:.3g}", "-" if g is None else f"{g:.3g}",
            f"{c['total_params'] / 1e9:.3g}/{c['active_params'] / 1e9:.3g}B",
            f"{c['tokens']:.3g}", f"{c['learning_rate']:.3g}", f"{c['batch_tokens']:.3g}",
            f"{c[score]:.4g}",
        )
    # Ten columns need ~110 characters; a piped stdout defaults to 80 in rich.
    Console(width=max(console.width, 112)).print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(predict_app, name="predict")
    app.command("design")(design_cmd)
