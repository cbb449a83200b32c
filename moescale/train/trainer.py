"""Train a spec to a compute budget: ``train(spec, config, out_dir) -> result``.

The run trains for ``D = C / M`` tokens (M = Ling's training FLOPs per token at
the run's sequence length, [EL] arXiv 2507.17702 App. C), in ``round(D / B)``
optimizer steps of B tokens, so ``result["flops"]`` is within half a batch of
C. Outputs in ``out_dir``:

- ``config.json`` — the fully resolved config (spec, train options, plan, data), versioned;
- ``metrics.jsonl`` — one line per log step: ``step``, ``tokens``, ``flops``, ``lr``,
  ``train_loss``, ``aux_loss``, ``val_loss`` (eval steps), ``epoch``, MoE routing
  statistics (e.g. ``max_load_ratio``, averaged over micro-batches and ranks);
- ``tb/`` — TensorBoard events (also throughput and MFU);
- ``checkpoint.pt`` (+ ``checkpoint.prev.pt``) while running (atomic, checksummed, weights-only;
  a re-run resumes from it), ``model.pt`` and ``model.safetensors`` at the end;
- ``result.json`` — the run record (see :func:`train`).

Under ``torchrun`` every rank runs :func:`train`; rank 0 writes every file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from moescale.errors import ConfigError, DataError
from moescale.spec.accounting import count_params
from moescale.spec.io import atomic_write
from moescale.spec.model_spec import ModelSpec
from moescale.train import parallel
from moescale.train.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    remove_checkpoints,
    rng_state,
    save_checkpoint,
    save_weights,
    set_rng_state,
)
from moescale.train.config import TRAIN_SCHEMA_VERSION, TrainConfig, TrainPlan, resolve_plan
from moescale.train.run_log import MetricsLog, ProgressBar, tensorboard_writer
from moescale.train.schedule import lr_at
from moescale.train.setup import (
    build_optimizer,
    build_training_model,
    open_training_data,
    runtime_settings,
)
from moescale.train.throughput import gemm_peak_flops

__all__ = ["train", "RESULT_NAME", "CONFIG_NAME", "METRICS_NAME"]

RESULT_NAME = "result.json"
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"


def _run_key(spec: ModelSpec, config: TrainConfig) -> dict[str, Any]:
    spec_d = {k: v for k, v in spec.to_dict().items() if k not in ("extra", "name")}
    return json.loads(json.dumps({"spec": spec_d, "train": config.run_key()}))


def _key_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    for part in ("spec", "train"):
        a, b = old.get(part, {}), new.get(part, {})
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                out.append(f"{part}.{k}: {a.get(k)!r} -> {b.get(k)!r}")
    return out


def _check_same_run(old: dict[str, Any], new: dict[str, Any], where: Path) -> None:
    diff = _key_diff(old, new)
    if diff:
        raise ConfigError(
            f"{where} belongs to a run with a different config ({'; '.join(diff[:6])}); "
            "use another --out folder or delete it"
        )


def _prepare_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output folder {str(out)!r} is not writable: {exc.strerror}") from None


def _finished(out: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    path = out / RESULT_NAME
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}; delete it to retrain") from None
    _check_same_run(result.get("run_key", {}), key, path)
    return result


def _scalar_stats(stats: dict[Any, Any] | None) -> dict[str, torch.Tensor]:
    """Scalar routing statistics of one forward pass (tensors kept on device, no sync).

    The model reports per MoE layer ``{layer: {"imbalance": max/mean load, "dropped_fraction",
    "load"}}``; the trainer logs ``max_load_ratio`` (worst layer's max/mean expert load),
    ``mean_load_ratio`` (mean over layers) and ``dropped_fraction`` (mean over layers).
    Flat scalar entries (``{name: value}``) are passed through.
    """
    out: dict[str, torch.Tensor] = {}
    per_layer: dict[str, list[torch.Tensor]] = {}
    for k, v in (stats or {}).items():
        if isinstance(v, dict):
            for name, value in v.items():
                if isinstance(value, torch.Tensor) and value.numel() == 1:
                    per_layer.setdefault(name, []).append(value.detach().reshape(()).double())
        elif isinstance(v, torch.Tensor) and v.numel() == 1:
            out[str(k)] = v.detach().reshape(()).double()
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[str(k)] = torch.tensor(float(v), dtype=torch.float64)
    if "imbalance" in per_layer:
        ratios = torch.stack(per_layer.pop("imbalance"))
        out["max_load_ratio"] = ratios.max()
        out["mean_load_ratio"] = ratios.mean()
    for name, values in per_layer.items():
        out[name] = torch.stack(values).mean()
    return out


def train(
    spec: ModelSpec,
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train ``spec`` to ``config.compute`` FLOPs; return the run record (``result.json``).

    Idempotent: a folder holding a finished run with the same config returns its
    record without training; a folder holding a checkpoint resumes from it (the
    resumed run is bit-identical to an uninterrupted one on CPU). A folder of a
    run with a different spec or config raises :class:`ConfigError`.

    Returns
    -------
    dict
        ``status`` (``completed`` | ``diverged``), ``error``, ``val_loss`` (= ``loss``),
        ``train_loss`` (mean over the last 5% of steps), ``tokens``, ``flops`` (M·tokens),
        ``compute`` (requested C), ``flops_per_token`` (Ling M), ``flops_convention``,
        ``params_total``, ``params_active`` (and non-embedding), ``spec``, ``hyperparameters``,
        ``corpus_hash``, ``data``, ``wall_time_s``, ``tokens_per_s``, ``mfu``,
        ``peak_flops_per_s``, ``steps``, ``run_key``.

    Examples
    --------
    >>> spec = ModelSpec(d_model=32, n_layers=1, n_heads=2, vocab_size=257, d_ffn=64)
    >>> r = train(spec, TrainConfig(compute=1e9, seq_len=32), "/tmp/run")  # doctest: +SKIP
    """
    out = Path(out_dir)
    key = _run_key(spec, config)
    ctx = parallel.init_distributed(config.device)
    # the run sets process-global torch state; give the caller theirs back afterwards
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        done = _finished(out, key)
        if done is not None:
            return done
        if ctx.is_main:
            _prepare_dir(out)
        parallel.barrier(ctx)
        return _Run(spec, config, out, ctx, key, progress).run()
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        parallel.shutdown(ctx)


class _Run:
    """One training run; state that a checkpoint captures lives in attributes."""

    def __init__(self, spec, config, out, ctx, key, progress) -> None:
        self.spec, self.config, self.out, self.ctx, self.key = spec, config, out, ctx, key
        self.plan: TrainPlan = resolve_plan(spec, config, ctx.world_size)
        self.runtime = runtime_settings(config, ctx, self.plan, moe=spec.is_moe)
        self.progress_enabled = progress
        self.data, self.val = open_training_data(spec, config, self.plan, ctx)
        self.model, self.step_model, self.eval_model = build_training_model(
            spec, config, ctx, self.runtime
        )
        self.optimizer = build_optimizer(self.model, config, ctx)
        self.metrics = MetricsLog(out / METRICS_NAME, enabled=ctx.is_main)
        self.start_step = 0
        self.wall_prev = 0.0
        self.step_losses: list[float] = []
        self.last_val: float | None = None
        self.stat_keys: list[str] | None = None

    # ------------------------------------------------------------------ state
    def _write_config(self) -> None:
        record = {
            "schema_version": TRAIN_SCHEMA_VERSION,
            "run_key": self.key,
            "spec": self.spec.to_dict(),
            "train": self.config.to_dict(),
            "plan": self.plan.to_dict(),
            "data": self.data.describe(),
            "runtime": self.runtime.to_dict(),
            "world_size": self.ctx.world_size,
            "torch_version": torch.__version__,
        }
        atomic_write(self.out / CONFIG_NAME, json.dumps(record, indent=2, default=str) + "\n")

    def _restore(self) -> None:
        path = self.out / CONFIG_NAME
        if path.is_file():
            with contextlib.suppress(OSError, json.JSONDecodeError):
                _check_same_run(json.loads(path.read_text()).get("run_key", {}), self.key, path)
        ckpt = load_checkpoint(self.out, n_steps=self.plan.n_steps,
                               world_size=self.ctx.world_size, quarantine=self.ctx.is_main)
        if ckpt is None:
            self.metrics.truncate(0)
            return
        _check_same_run(ckpt["run_key"], self.key, self.out / CHECKPOINT_NAME)
        parallel.load_state(self.model, self.optimizer, ckpt["model"], ckpt["optimizer"],
                            self.runtime.fsdp)
        set_rng_state(ckpt["rng"])
        self.start_step = int(ckpt["step"])
        self.wall_prev = float(ckpt["wall_time_s"])
        self.step_losses = list(ckpt["step_losses"])
        self.last_val = ckpt["last_val_loss"]
        self.stat_keys = ckpt["stat_keys"]
        self.metrics.truncate(int(ckpt["metrics_lines"]))

    def _checkpoint(self, next_step: int, wall: float) -> None:
        fsdp = self.runtime.fsdp
        model_sd = parallel.model_state(self.model, fsdp)  # collective under FSDP2
        optim_sd = parallel.optimizer_state(self.model, self.optimizer, fsdp)
        if not self.ctx.is_main:
            return
        self.metrics.sync()
        payload = {
            "run_key": self.key,
            "step": next_step,
            "model": model_sd,
            "optimizer": optim_sd,
            "rng": rng_state(),
            "metrics_lines": self.metrics.lines,
            "wall_time_s": wall,
            "step_losses": list(self.step_losses),
            "last_val_loss": self.last_val,
            "stat_keys": self.stat_keys,
            "world_size": self.ctx.world_size,
        }
        save_checkpoint(self.out, payload)

    # ------------------------------------------------------------------ steps
    def _autocast(self):
        if self.runtime.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.runtime.autocast_dtype)

    def _train_step(self, step: int) -> tuple[torch.Tensor, float]:
        """Forward/backward over the micro-batches of ``step``; returns the all-reduced stats
        vector ``[loss_sum, aux_sum, n_micro, *routing stats]`` and the gradient norm."""
        plan, ctx, cfg = self.plan, self.ctx, self.config
        x, y = self.data.batch(
            step, plan.batch_size, plan.seq_len, rank=ctx.rank, world_size=ctx.world_size,
            seed=cfg.seed,
        )
        x = x.to(ctx.device, non_blocking=True)
        y = y.to(ctx.device, non_blocking=True)
        mb, n_micro = plan.micro_batch_size, plan.grad_accum
        acc: torch.Tensor | None = None
        for i in range(n_micro):
            xs, ys = x[i * mb : (i + 1) * mb], y[i * mb : (i + 1) * mb]
            with parallel.no_sync(self.step_model, i < n_micro - 1), self._autocast():
                outp = self.step_model(xs, ys)
                aux = outp.aux_loss if getattr(outp, "aux_loss", None) is not None else None
                total = outp.loss if aux is None else outp.loss + aux
            (total / n_micro).backward()
            stats = _scalar_stats(getattr(outp, "routing_stats", None))
            if self.stat_keys is None:
                self.stat_keys = sorted(stats)
            parts = [
                outp.loss.detach().double().reshape(()),
                (aux.detach().double().reshape(()) if aux is not None
                 else torch.zeros((), dtype=torch.float64, device=ctx.device)),
            ] + [stats[k].to(ctx.device) if k in stats else
                 torch.full((), math.nan, dtype=torch.float64, device=ctx.device)
                 for k in self.stat_keys]
            vec = torch.stack(parts)
            acc = vec if acc is None else acc + vec
        if cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        else:
            norm = torch.zeros(())
        vec = torch.cat([acc / n_micro, torch.ones(1, dtype=torch.float64, device=ctx.device)])
        vec = parallel.all_reduce_sum(vec.cpu(), ctx)
        n_ranks = float(vec[-1])
        return vec[:-1] / n_ranks, float(norm)

    @torch.no_grad()
    def _evaluate(self) -> float:
        model = self.eval_model
        model.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.ctx.device)
        for x, y in self.val:
            with self._autocast():
                total += model(x.to(self.ctx.device), y.to(self.ctx.device)).loss.double()
        model.train()
        vec = torch.stack([total.cpu(), torch.tensor(float(len(self.val)), dtype=torch.float64)])
        vec = parallel.all_reduce_sum(vec, self.ctx)
        return float(vec[0] / vec[1])

    # ------------------------------------------------------------------ loop
    def run(self) -> dict[str, Any]:
        cfg, plan, ctx = self.config, self.plan, self.ctx
        self._restore()
        if ctx.is_main:
            self._write_config()
        peak = gemm_peak_flops(ctx.device, seconds=0.3) if ctx.is_main else 0.0
        peak = float(parallel.broadcast_object(peak, ctx))
        max_loss = cfg.max_loss if cfg.max_loss is not None else 2 * math.log(self.spec.vocab_size)
        tb = tensorboard_writer(self.out / "tb", self.start_step) if ctx.is_main else None
        bar = ProgressBar(plan.n_steps, self.start_step,
                          enabled=self.progress_enabled if ctx.is_main else False)
        m = plan.flops_per_token
        t_start = time.perf_counter()
        t_train = 0.0
        tokens_here = 0
        last_ckpt = time.perf_counter()
        status, error = "completed", None
        step = self.start_step
        try:
            for step in range(self.start_step, plan.n_steps):
                lr = lr_at(step, plan, cfg)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                t0 = time.perf_counter()
                vec, gnorm = self._train_step(step)
                loss, aux = float(vec[0]), float(vec[1])
                if not (math.isfinite(loss) and math.isfinite(gnorm) and math.isfinite(aux)):
                    status = "diverged"
                    error = f"non-finite loss {loss} (grad norm {gnorm}) at step {step + 1}"
                    break
                if loss > max_loss:
                    status = "diverged"
                    error = (f"train loss {loss:.4g} above max_loss {max_loss:.4g} "
                             f"at step {step + 1}")
                    break
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                update = getattr(self.model, "update_router_biases", None)
                if callable(update):
                    update()
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize(ctx.device)
                t_train += time.perf_counter() - t0
                tokens_here += plan.batch_tokens
                self.step_losses.append(loss)
                done = step + 1
                is_eval = done % plan.eval_every_steps == 0 or done == plan.n_steps
                is_log = is_eval or done % cfg.log_every == 0
                tps = tokens_here / t_train if t_train > 0 else 0.0
                mfu = m * tps / (peak * ctx.world_size) if peak > 0 else 0.0
                if is_log:
                    record = {
                        "step": done,
                        "tokens": done * plan.batch_tokens,
                        "flops": done * plan.batch_tokens * m,
                        "lr": lr,
                        "train_loss": loss,
                        "aux_loss": aux,
                        "grad_norm": gnorm,
                        "epoch": self.data.epoch_of(done, plan.batch_size, plan.seq_len),
                    }
                    for k, v in zip(self.stat_keys or [], vec[2:].tolist(), strict=True):
                        record[k] = v
                    if is_eval:
                        self.last_val = self._evaluate()
                        record["val_loss"] = self.last_val
                    self.metrics.write(record)
                    if tb is not None:
                        for k, v in record.items():
                            if k != "step" and isinstance(v, float) and math.isfinite(v):
                                tb.add_scalar(f"run/{k}", v, done)
                        tb.add_scalar("perf/tokens_per_s", tps, done)
                        tb.add_scalar("perf/mfu", mfu, done)
                bar.update(done, loss=loss, tokens_per_s=tps, mfu=mfu)
                due_steps = cfg.checkpoint_every_steps and done % cfg.checkpoint_every_steps == 0
                due_time = (cfg.checkpoint_every_s is not None
                            and time.perf_counter() - last_ckpt >= cfg.checkpoint_every_s)
                if done < plan.n_steps and _agree(bool(due_steps or due_time), ctx):
                    self._checkpoint(done, self.wall_prev + time.perf_counter() - t_start)
                    if tb is not None:
                        tb.flush()
                    last_ckpt = time.perf_counter()
        finally:
            bar.close()
            self.metrics.close()
            if tb is not None:
                tb.close()
        wall = self.wall_prev + time.perf_counter() - t_start
        tps = tokens_here / t_train if t_train > 0 else 0.0
        result = self._result(status, error, step, wall, tps, peak)
        final_sd = parallel.model_state(self.model, self.runtime.fsdp)
        if ctx.is_main:
            if status == "completed":
                save_weights(self.out, final_sd)
            atomic_write(self.out / RESULT_NAME, json.dumps(result, indent=2) + "\n")
            remove_checkpoints(self.out)
        parallel.barrier(ctx)
        return result

    def _result(self, status, error, step, wall, tps, peak) -> dict[str, Any]:
        plan, cfg, spec = self.plan, self.config, self.spec
        steps_done = len(self.step_losses)
        tail = self.step_losses[-max(1, steps_done // 20):] if steps_done else []
        pc = count_params(spec)
        tokens = steps_done * plan.batch_tokens
        m = plan.flops_per_token
        hyper = {
            "learning_rate": plan.learning_rate,
            "batch_tokens": plan.batch_tokens,
            "batch_size": plan.batch_size,
            "micro_batch_size": plan.micro_batch_size,
            "grad_accum": plan.grad_accum,
            "seq_len": plan.seq_len,
            "n_steps": plan.n_steps,
            "schedule": cfg.schedule,
            "warmup_fraction": cfg.warmup_fraction,
            "decay_fraction": cfg.decay_fraction,
            "min_lr_ratio": cfg.min_lr_ratio,
            "betas": [cfg.beta1, cfg.beta2],
            "weight_decay": cfg.weight_decay,
            "grad_clip": cfg.grad_clip,
            "init_std": cfg.init_std,
            "seed": cfg.seed,
            "epochs_allowed": cfg.epochs,
        }
        val = self.last_val if status == "completed" else None
        desc = self.data.describe()
        return {
            "schema_version": TRAIN_SCHEMA_VERSION,
            "status": status,
            "error": error,
            "val_loss": val,
            "loss": val,
            "train_loss": (sum(tail) / len(tail)) if tail else None,
            "final_train_loss": self.step_losses[-1] if self.step_losses else None,
            "steps": steps_done,
            "tokens": tokens,
            "flops": tokens * m,
            "compute": cfg.compute,
            "flops_per_token": m,
            "flops_convention": "ling",
            "params_total": pc.total,
            "params_active": pc.active,
            "params_total_non_embedding": pc.non_embedding,
            "params_active_non_embedding": pc.active_non_embedding,
            "arch": "moe" if spec.is_moe else "dense",
            "spec": spec.to_dict(),
            "learning_rate": plan.learning_rate,
            "batch_tokens": plan.batch_tokens,
            "seq_len": plan.seq_len,
            "seed": cfg.seed,
            "hyperparameters": hyper,
            "train_config": cfg.to_dict(),
            "plan_notes": list(plan.notes),
            "corpus_hash": desc["corpus_hash"],
            "data": desc,
            "epochs": self.data.epoch_of(steps_done, plan.batch_size, plan.seq_len),
            "wall_time_s": wall,
            "tokens_per_s": tps,
            "mfu": m * tps / (peak * self.ctx.world_size) if peak > 0 else None,
            "peak_flops_per_s": peak,
            "world_size": self.ctx.world_size,
            "device": str(self.ctx.device),
            "runtime": self.runtime.to_dict(),
            "run_key": self.key,
        }


def _agree(flag: bool, ctx: parallel.DistContext) -> bool:
    """Rank 0's decision on every rank (time-based checkpoints differ per rank otherwise)."""
    if not ctx.distributed:
        return flag
    vec = torch.tensor([1.0 if (flag and ctx.is_main) else 0.0], dtype=torch.float64)
    return bool(parallel.all_reduce_sum(vec, ctx)[0] > 0)
