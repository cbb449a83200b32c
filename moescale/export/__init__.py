"""Export trained runs to other ecosystems.

- :func:`export_hf` — a finished run as a transformers folder (``config.json`` +
  ``model.safetensors``) in the family that represents its spec exactly (``hf.py``).

Imports flow: cli → export → train → model → spec.
"""

from moescale.export.hf import HF_FAMILIES, HFExport, export_hf, hf_config, hf_family, hf_state_dict

__all__ = ["HF_FAMILIES", "HFExport", "export_hf", "hf_config", "hf_family", "hf_state_dict"]
