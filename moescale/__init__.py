"""moescale: Efficiency Leverage and scaling laws for Mixture-of-Experts language models.

Subpackages (imports flow one way: cli → sweep → train → {model, data} → spec;
cli → report → fit → laws → spec; sweep → fit; README "Layout" lists three narrow edges):

- :mod:`moescale.spec` — architecture spec, exact params/FLOPs, HF config import.
- :mod:`moescale.laws` — law forms and published coefficients with provenance.
- :mod:`moescale.fit` — run tables, robust fitters, bootstrap, EL from runs.
- :mod:`moescale.model` — PyTorch dense/MoE transformer and MoE back-ends.
- :mod:`moescale.data` — offline corpora, tokenizers, token cache.
- :mod:`moescale.train` — budget-driven trainer, checkpoints, DDP.
- :mod:`moescale.sweep` — sweep planner, executors, SQLite run store, demo.
- :mod:`moescale.report` — plots and the HTML report.
- :mod:`moescale.export` — finished runs as transformers folders (cli → export → train).

``import moescale`` is light (no torch); import the subpackage you need.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
