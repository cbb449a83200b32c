"""Where the MoE layer's time goes: ``torch.profiler`` over forward+backward of the MoE
layer (``grouped`` back-end) and of the dense SwiGLU of equal active FLOPs.

Usage::

    python benchmarks/profile_moe_layer.py [--device cuda --dtype bfloat16] [--tokens 32768
        --d-model 2048 --d-expert 512] [--out profile.txt]

Prints, per module, the operators that take the most device time (self time; CUDA
kernels on a GPU, operators on the CPU) after warm-up.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from moescale.model.bench import _DTYPES, _fwd_bwd, _init
from moescale.model.config import MoEConfig
from moescale.model.ffn import FeedForward
from moescale.model.moe import MoELayer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=list(_DTYPES))
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--shared", type=int, default=1)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--d-expert", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--rows", type=int, default=18)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    dev, dt = torch.device(a.device), _DTYPES[a.dtype]
    moe = _init(MoELayer(d_model=a.d_model, n_experts=a.experts, top_k=a.top_k,
                         d_expert=a.d_expert, n_shared=a.shared, d_shared=a.d_expert,
                         cfg=MoEConfig(backend="grouped"))).to(dev, dt)
    dense = _init(FeedForward(a.d_model, (a.top_k + a.shared) * a.d_expert)).to(dev, dt)
    x = torch.randn(a.tokens, a.d_model, device=dev, dtype=dt, requires_grad=True)
    cuda = dev.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    report = []
    for name, module in (("moe", moe), ("dense", dense)):
        step = _fwd_bwd(module, x)
        for _ in range(3):
            step()
        if cuda:
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            for _ in range(a.iters):
                step()
            if cuda:
                torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by=sort, row_limit=a.rows, max_name_column_width=60)
        report.append(f"### {name}: {a.iters} x fwd+bwd, T={a.tokens} D={a.d_model} "
                      f"F={a.d_expert} E={a.experts} K={a.top_k} S={a.shared} {a.device} "
                      f"{a.dtype}\n{table}")
    text = "\n".join(report)
    print(text)
    if a.out:
        with open(a.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
