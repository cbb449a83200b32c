"""Train a spec to a compute budget: ``train(spec, config, out_dir) -> result``.

The run trains for ``D = C / M`` tokens (M = Ling's training FLOPs per token at
the run's sequence length, [EL] arXiv 2507.17702 App. C), in ``round(D / B)``
optimizer steps of B tokens, so ``result["flops"]`` is within half a batch of
C. Outputs in ``out_dir``:

- ``moescale_run.json`` — the fully resolved config (spec, train options, plan, data),
  versioned (named so that Hugging Face tools do not mistake it for a model
  ``config.json``; folders written before schema 2 have ``config.json`` and still resume);
- ``metrics.jsonl`` — one line per log step: ``step``, ``tokens``, ``flops``, ``lr``,
  ``train_loss``, ``aux_loss``, ``val_loss`` (eval steps), ``epoch``, MoE routing
  statistics (e.g. ``max_load_ratio``, averaged over micro-batches and ranks);
- ``tb/`` — TensorBoard events (also throughput and MFU);
- ``checkpoint.pt`` (+ ``checkpoint.prev.pt``) while running (atomic, checksummed, weights-only;
  a re-run resumes from it; under FSDP2 the sharded ``checkpoint.dcp/``), ``model.pt`` and
  ``model.safetensors`` at the end (the same moescale key names);
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
from moescale.spec.accounting import count_params, flops_per_token
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
from moescale.train.config import (
    MICRO_BATCH_TOKENS,
    TRAIN_SCHEMA_VERSION,
    TrainConfig,
    TrainPlan,
    resolve_plan,
)
from moescale.train.identity import identity_diff, run_identity, upgrade_identity
from moescale.train.resources import (
    RUNS_PER_GPU_ENV,
    available_memory,
    check_budget,
    check_memory,
    estimate_memory,
    fitting_micro_batch_tokens,
)
from moescale.train.run_log import MetricsLog, ProgressBar, tensorboard_writer
from moescale.train.rundir import claim_run_dir, inspect_run_dir
from moescale.train.schedule import lr_at
from moescale.train.setup import (
    build_training,
    eval_block_windows,
    open_training_data,
    restored_torch_state,
    runtime_settings,
)
from moescale.train.sharded import load_sharded, save_sharded
from moescale.train.step import StepResult, eval_losses, train_step
from moescale.train.throughput import gemm_peak_flops

__all__ = ["train", "RESULT_NAME", "RUN_CONFIG_NAME", "METRICS_NAME"]

RESULT_NAME = "result.json"
RUN_CONFIG_NAME = "moescale_run.json"
LEGACY_RUN_CONFIG_NAME = "config.json"
"""Schema-1 name of :data:`RUN_CONFIG_NAME` (read when resuming an old folder)."""
METRICS_NAME = "metrics.jsonl"


def _check_same_run(stored: dict[str, Any], identity: dict[str, Any], where: Path) -> None:
    """Refuse ``where`` unless the identity it stores (any schema) is ``identity``."""
    diff = identity_diff(upgrade_identity(stored), identity)
    if diff:
        raise ConfigError(
            f"{where} belongs to a run with a different config ({'; '.join(diff[:6])}); "
            "use another --out folder or delete it"
        )


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


def train(
    spec: ModelSpec,
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    progress: bool | None = None,
    ignore_memory_check: bool = False,
) -> dict[str, Any]:
    """Train ``spec`` to ``config.compute`` FLOPs; return the run record (``result.json``).

    Idempotent: a folder holding a finished run with the same config returns its
    record without training; a folder holding a checkpoint resumes from it (the
    resumed run is bit-identical to an uninterrupted one on CPU). A folder of a
    run with a different spec or config raises :class:`ConfigError`, and so does a
    folder that is not empty and not a moescale run, or that holds a symbolic link
    (:func:`~moescale.train.rundir.inspect_run_dir`). Before anything is built or
    written, a budget below one optimizer step and a run whose memory estimate
    (:func:`~moescale.train.resources.estimate_memory`) exceeds the machine's are
    refused; ``ignore_memory_check`` skips the latter.

    Returns
    -------
    dict
        ``status`` (``completed`` | ``diverged``), ``error``, ``loss`` (= ``val_loss``: the
        final evaluation over ``eval_tokens`` validation tokens drawn by document, or the
        whole split), ``val_loss_se`` (standard error over its equal blocks),
        ``val_tokens``, ``eval_block_losses``, ``evaluation`` (the sample),
        ``val_loss_periodic`` (last value of the metrics curve), ``train_loss_last5``
        (= ``train_loss``: mean over the last 5% of steps), ``flops_per_token_full``
        (convention ``full``: + head and router), ``tokens``, ``flops`` (M·tokens),
        ``compute`` (requested C), ``flops_per_token`` (Ling M), ``flops_convention``,
        ``params_total``, ``params_active`` (and non-embedding), ``spec``, ``hyperparameters``,
        ``corpus_hash``, ``data``, ``wall_time_s``, ``tokens_per_s``, ``mfu``,
        ``peak_flops_per_s``, ``steps``, ``run_key``.

    Examples
    --------
    >>> spec = ModelSpec(d_model=32, n_layers=1, n_heads=2, vocab_size=257, d_ffn=64)
    >>> r = train(spec, TrainConfig(compute=1e9, seq_len=32), "/tmp/run")  # doctest: +SKIP
    """
    folder = inspect_run_dir(out_dir, (RUN_CONFIG_NAME, LEGACY_RUN_CONFIG_NAME, RESULT_NAME))
    out = folder.path
    key = run_identity(spec, config)
    if folder.record is not None:
        _check_same_run(folder.record["run_key"], key, folder.record_path)
    ctx = parallel.init_distributed(config.device)
    try:
        with restored_torch_state():  # the run sets process-global torch state
            done = _finished(out, key)
            if done is not None:
                return done
            run = _Run(spec, config, out, ctx, key, progress, ignore_memory_check)
            with _claimed(out, ctx):  # created only now: a refused run leaves no folder
                return run.run()
    finally:
        parallel.shutdown(ctx)


def _micro_batch_cap(spec: ModelSpec, config: TrainConfig, ctx) -> int:
    """Tokens per micro-batch when ``micro_batch_size`` is unset: on a GPU what fits in half
    its free memory, divided among the runs sharing it (:data:`RUNS_PER_GPU_ENV`), and the
    smallest over the ranks, so that every rank runs the same plan; elsewhere
    :data:`~moescale.train.config.MICRO_BATCH_TOKENS`."""
    if config.micro_batch_size is not None or ctx.device.type != "cuda":
        return MICRO_BATCH_TOKENS
    free = available_memory(str(ctx.device))
    if free is None:
        return MICRO_BATCH_TOKENS
    try:
        share = max(1, int(os.environ.get(RUNS_PER_GPU_ENV, "1")))
    except ValueError:
        share = 1
    cap = fitting_micro_batch_tokens(spec, free, world_size=ctx.world_size, fsdp=config.fsdp,
                                     bf16=config.dtype != "float32", fraction=0.5 / share)
    return int(parallel.all_reduce_min(torch.tensor([float(cap)], dtype=torch.float64), ctx))


class _Run:
    """One training run; state that a checkpoint captures lives in attributes."""

    def __init__(self, spec, config, out, ctx, key, progress, ignore_memory_check) -> None:
        self.spec, self.config, self.out, self.ctx, self.key = spec, config, out, ctx, key
        self.plan: TrainPlan = resolve_plan(spec, config, ctx.world_size,
                                            micro_batch_tokens=_micro_batch_cap(spec, config, ctx))
        plan = self.plan
        self.runtime = runtime_settings(config, ctx, self.plan, moe=spec.is_moe)
        check_budget(config.compute, plan.batch_tokens, plan.flops_per_token)
        self.memory = estimate_memory(
            spec, plan.micro_batch_size * plan.seq_len, world_size=ctx.world_size,
            fsdp=self.runtime.fsdp, bf16=self.runtime.autocast_dtype is not None)
        if not ignore_memory_check:
            check_memory(self.memory, str(ctx.device), ranks_here=ctx.local_world_size)
        self.progress_enabled = progress
        self.data, self.val, self.eval_sample = open_training_data(spec, config, self.plan, ctx)
        self.block_windows = eval_block_windows(config, ctx.world_size)
        self.parts = build_training(spec, config, ctx, self.runtime)
        self.metrics = MetricsLog(out / METRICS_NAME, enabled=ctx.is_main)
        self.start_step = 0
        self.wall_prev = 0.0
        self.step_losses: list[float] = []
        self.last_val: float | None = None
        # timing of this process (not checkpointed: wall time is, via wall_prev)
        self.t_start = 0.0
        self.t_train = 0.0
        self.tokens_here = 0
        self.peak = 0.0

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
        text = json.dumps(record, indent=2, default=str) + "\n"
        atomic_write(self.out / RUN_CONFIG_NAME, text)
        (self.out / LEGACY_RUN_CONFIG_NAME).unlink(missing_ok=True)

    def _restore(self) -> None:
        for name in (RUN_CONFIG_NAME, LEGACY_RUN_CONFIG_NAME):
            path = self.out / name
            if not path.is_file():
                continue
            with contextlib.suppress(OSError, json.JSONDecodeError):
                record = json.loads(path.read_text())
                if isinstance(record, dict) and "run_key" in record:  # not an HF config
                    _check_same_run(record["run_key"], self.key, path)
        if self.runtime.fsdp:  # sharded (DCP): loads into any number of ranks
            ckpt = load_sharded(self.out, self.parts.model, self.parts.optimizer, self.ctx,
                                n_steps=self.plan.n_steps, batch_tokens=self.plan.batch_tokens)
        else:
            ckpt = load_checkpoint(self.out, n_steps=self.plan.n_steps,
                                   world_size=self.ctx.world_size, quarantine=self.ctx.is_main)
        if ckpt is None:
            self.metrics.truncate(0)
            return
        _check_same_run(ckpt["run_key"], self.key, self.out / CHECKPOINT_NAME)
        if not self.runtime.fsdp:
            parallel.load_state(self.parts.model, self.parts.optimizer, ckpt["model"],
                                ckpt["optimizer"], fsdp=False)
        set_rng_state(ckpt["rng"])
        self.start_step = int(ckpt["step"])
        self.wall_prev = float(ckpt["wall_time_s"])
        self.step_losses = list(ckpt["step_losses"])
        self.last_val = ckpt["last_val_loss"]
        self.metrics.truncate(int(ckpt["metrics_lines"]))

    def _checkpoint(self, next_step: int) -> None:
        self.metrics.sync()
        payload = {
            "run_key": self.key,
            "step": next_step,
            "batch_tokens": self.plan.batch_tokens,
            "rng": rng_state(),
            "metrics_lines": self.metrics.lines,
            "wall_time_s": self._wall(),
            "step_losses": list(self.step_losses),
            "last_val_loss": self.last_val,
            "world_size": self.ctx.world_size,
        }
        model, optimizer = self.parts.model, self.parts.optimizer
        if self.runtime.fsdp:  # collective: every rank writes its shards
            save_sharded(self.out, model, optimizer, payload, self.ctx)
        elif self.ctx.is_main:
            payload["model"] = model.state_dict()
            payload["optimizer"] = optimizer.state_dict()
            save_checkpoint(self.out, payload)

    # ------------------------------------------------------------------ steps
    def _wall(self) -> float:
        return self.wall_prev + time.perf_counter() - self.t_start

    def _tokens_per_s(self) -> float:
        return self.tokens_here / self.t_train if self.t_train > 0 else 0.0

    def _mfu(self, tps: float) -> float:
        peak = self.peak * self.ctx.world_size
        return self.plan.flops_per_token * tps / peak if peak > 0 else 0.0

    def _step(self, step: int, max_loss: float) -> tuple[float, StepResult]:
        """Train optimizer step ``step`` (0-based); returns its learning rate and result."""
        plan, ctx, cfg = self.plan, self.ctx, self.config
        x, y = self.data.batch(step, plan.batch_size, plan.seq_len, rank=ctx.rank,
                               world_size=ctx.world_size, seed=cfg.seed)
        lr = lr_at(step, plan, cfg)
        t0 = time.perf_counter()
        res = train_step(self.parts, x, y, lr=lr, micro_batch_size=plan.micro_batch_size,
                         grad_clip=cfg.grad_clip, max_loss=max_loss)
        if res.diverged is None:
            self.t_train += time.perf_counter() - t0
            self.tokens_here += plan.batch_tokens
            self.step_losses.append(res.loss)
        return lr, res

    def _evaluate(self) -> float:
        """Mean validation loss over the fixed periodic-evaluation batches."""
        losses = eval_losses(self.parts, self.val)
        total = 0.0
        for v in losses:  # sequential, as the record has always been computed
            total += v
        return total / len(losses)

    def _final_evaluation(self) -> dict[str, Any]:
        """Loss over the final-evaluation sample (the whole validation split, or the stated
        sample of ``eval_tokens``) in equal blocks: the run's ``loss``, the blocks' means
        and the standard error of their mean (blocks weigh equally: same token count)."""
        ctx = self.ctx
        blocks = eval_losses(self.parts, self.data.iter_eval_blocks(
            self.eval_sample, self.block_windows, rank=ctx.rank, world_size=ctx.world_size))
        n = len(blocks)
        mean = math.fsum(blocks) / n
        se = (math.sqrt(math.fsum((b - mean) ** 2 for b in blocks) / (n - 1) / n)
              if n > 1 else None)
        return {
            "loss": mean,
            "val_loss_se": se,
            "val_tokens": self.eval_sample.tokens,
            "eval_block_losses": blocks,
            "evaluation": {**self.eval_sample.describe(), "n_blocks": n,
                           "block_tokens": self.block_windows * self.plan.seq_len},
        }

    def _log(self, done: int, lr: float, res: StepResult, tb) -> None:
        """``metrics.jsonl`` line (and TensorBoard scalars) after step ``done``."""
        plan = self.plan
        is_eval = done % plan.eval_every_steps == 0 or done == plan.n_steps
        if not (is_eval or done % self.config.log_every == 0):
            return
        record = {
            "step": done,
            "tokens": done * plan.batch_tokens,
            "flops": done * plan.batch_tokens * plan.flops_per_token,
            "lr": lr,
            "train_loss": res.loss,
            "aux_loss": res.aux_loss,
            "grad_norm": res.grad_norm,
            "epoch": self.data.epoch_of(done, plan.batch_size, plan.seq_len),
            **res.stats,
        }
        if is_eval:
            self.last_val = self._evaluate()
            record["val_loss"] = self.last_val
        self.metrics.write(record)
        if tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, float) and math.isfinite(v):
                    tb.add_scalar(f"run/{k}", v, done)
            tps = self._tokens_per_s()
            tb.add_scalar("perf/tokens_per_s", tps, done)
            tb.add_scalar("perf/mfu", self._mfu(tps), done)

    def _checkpoint_due(self, done: int, last_ckpt: float) -> bool:
        cfg = self.config
        due_steps = cfg.checkpoint_every_steps and done % cfg.checkpoint_every_steps == 0
        due_time = (cfg.checkpoint_every_s is not None
                    and time.perf_counter() - last_ckpt >= cfg.checkpoint_every_s)
        return done < self.plan.n_steps and _agree(bool(due_steps or due_time), self.ctx)

    # ------------------------------------------------------------------ loop
    def _loop(self, tb, bar) -> tuple[str, str | None, int]:
        """Train from ``start_step``; returns (status, error, last step index)."""
        cfg = self.config
        max_loss = cfg.max_loss if cfg.max_loss is not None else 2 * math.log(self.spec.vocab_size)
        last_ckpt = time.perf_counter()
        step = self.start_step
        for step in range(self.start_step, self.plan.n_steps):
            lr, res = self._step(step, max_loss)
            if res.diverged is not None:
                return "diverged", f"{res.diverged} at step {step + 1}", step
            done = step + 1
            self._log(done, lr, res, tb)
            tps = self._tokens_per_s()
            bar.update(done, loss=res.loss, tokens_per_s=tps, mfu=self._mfu(tps))
            if self._checkpoint_due(done, last_ckpt):
                self._checkpoint(done)
                if tb is not None:
                    tb.flush()
                last_ckpt = time.perf_counter()
        return "completed", None, step

    def run(self) -> dict[str, Any]:
        ctx = self.ctx
        self._restore()
        if ctx.is_main:
            self._write_config()
        peak = gemm_peak_flops(ctx.device, seconds=0.3) if ctx.is_main else 0.0
        self.peak = float(parallel.broadcast_object(peak, ctx))
        tb = tensorboard_writer(self.out / "tb", self.start_step) if ctx.is_main else None
        bar = ProgressBar(self.plan.n_steps, self.start_step,
                          enabled=self.progress_enabled if ctx.is_main else False)
        self.t_start = time.perf_counter()
        try:
            status, error, step = self._loop(tb, bar)
        finally:
            bar.close()
            self.metrics.close()
            if tb is not None:
                tb.close()
        return self._finish(status, error, step)

    def _finish(self, status: str, error: str | None, step: int) -> dict[str, Any]:
        """Write ``model.pt`` (completed runs) and ``result.json``; drop the checkpoint."""
        ctx = self.ctx
        final = self._final_evaluation() if status == "completed" else {}
        result = self._result(status, error, step, self._wall(), self._tokens_per_s(), self.peak,
                              final)
        final_sd = parallel.model_state(self.parts.model, self.runtime.fsdp)
        if ctx.is_main:
            if status == "completed":
                save_weights(self.out, final_sd)
            atomic_write(self.out / RESULT_NAME, json.dumps(result, indent=2) + "\n")
            remove_checkpoints(self.out)
        parallel.barrier(ctx)
        return result

    def _result(self, status, error, step, wall, tps, peak, final) -> dict[str, Any]:
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
        val = final.get("loss")
        train_last5 = (sum(tail) / len(tail)) if tail else None
        desc = self.data.describe()
        return {
            "schema_version": TRAIN_SCHEMA_VERSION,
            "status": status,
            "error": error,
            "val_loss": val,
            "loss": val,
            "val_loss_se": final.get("val_loss_se"),
            "val_tokens": final.get("val_tokens"),
            "eval_block_losses": final.get("eval_block_losses"),
            "evaluation": final.get("evaluation"),
            "val_loss_periodic": self.last_val if status == "completed" else None,
            "train_loss": train_last5,
            "train_loss_last5": train_last5,
            "final_train_loss": self.step_losses[-1] if self.step_losses else None,
            "steps": steps_done,
            "tokens": tokens,
            "flops": tokens * m,
            "compute": cfg.compute,
            "flops_per_token": m,
            "flops_per_token_full": flops_per_token(spec, convention="full", seq_len=plan.seq_len),
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


@contextlib.contextmanager
def _claimed(out: Path, ctx: parallel.DistContext):
    """Rank 0 creates and locks the run folder (:func:`claim_run_dir`); every rank learns
    whether it could, so no rank waits at a barrier for one that failed."""
    with contextlib.ExitStack() as stack:
        error = None
        if ctx.is_main:
            try:
                stack.enter_context(claim_run_dir(out))
            except ConfigError as exc:
                error = exc
        failed = parallel.broadcast_object(None if error is None else str(error), ctx)
        if error is not None:
            raise error
        if failed is not None:
            raise ConfigError(failed)
        yield


def _agree(flag: bool, ctx: parallel.DistContext) -> bool:
    """Rank 0's decision on every rank (time-based checkpoints differ per rank otherwise)."""
    if not ctx.distributed:
        return flag
    vec = torch.tensor([1.0 if (flag and ctx.is_main) else 0.0], dtype=torch.float64)
    return bool(parallel.all_reduce_sum(vec, ctx)[0] > 0)
