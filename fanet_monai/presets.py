"""Per-dataset training presets from the paper (Sec. IV-A, Table I), chosen with one bundle override.

``train.json`` (and ``inference.json``) take ``image_size`` and ``learning_rate`` from ``PRESETS[@preset]``::

    fanet train data.json --preset drive                  # 512x512, lr 1e-3
    python -m monai.bundle run training --config_file bundle/configs/train.json --preset cvc-clinicdb ...

An explicit ``--image_size`` or ``--learning_rate`` still wins over the preset. ``"default"`` keeps the bundle's
previous defaults (256x256, lr 1e-4: the reference code's settings).

Paper: all images resized to 512x512 except the 2018 Data Science Bowl and CVC-ClinicDB (256x256); Adam with lr
1e-4 except DRIVE and CHASE-DB1 (1e-3, small training sets). ``offline_copies`` is Table I's "train after aug." per
training image minus the original (e.g. Kvasir-SEG 16,720 / 880 = 19 → 18 augmented copies), for
``prepare(..., offline_copies="paper")``.
"""

from __future__ import annotations

import copy
from typing import Any, Dict

__all__ = ["ALIASES", "PRESETS", "get_preset", "preset_value"]

PRESETS: Dict[str, Dict[str, Any]] = {
    "default": {"image_size": [256, 256], "learning_rate": 1e-4, "offline_copies": 0},
    "kvasir-seg": {"image_size": [512, 512], "learning_rate": 1e-4, "offline_copies": 18},  # 880 → 16,720
    "cvc-clinicdb": {"image_size": [256, 256], "learning_rate": 1e-4, "offline_copies": 28},  # 490 → 14,210
    "dsb2018": {"image_size": [256, 256], "learning_rate": 1e-4, "offline_copies": 31},  # 335 → 10,720
    "isic2018": {"image_size": [512, 512], "learning_rate": 1e-4, "offline_copies": 21},  # 1,815 → 39,930
    "em-isbi2012": {"image_size": [512, 512], "learning_rate": 1e-4, "offline_copies": 15},  # 24 → 384
    "drive": {"image_size": [512, 512], "learning_rate": 1e-3, "offline_copies": 31},  # 20 → 640
    "chase-db1": {"image_size": [512, 512], "learning_rate": 1e-3, "offline_copies": 31},  # 20 → 640
}

ALIASES: Dict[str, str] = {
    "kvasir": "kvasir-seg",
    "cvc": "cvc-clinicdb",
    "clinicdb": "cvc-clinicdb",
    "dsb": "dsb2018",
    "isic": "isic2018",
    "em": "em-isbi2012",
    "isbi2012": "em-isbi2012",
    "chase": "chase-db1",
    "chasedb1": "chase-db1",
}


def get_preset(name: str) -> Dict[str, Any]:
    """A copy of the preset ``name`` (a key of :data:`PRESETS` or :data:`ALIASES`, case-insensitive)."""
    key = str(name).lower().replace("_", "-")
    key = ALIASES.get(key, key)
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} (aliases: {', '.join(ALIASES)}).")
    return copy.deepcopy(PRESETS[key])


def preset_value(name: str, key: str) -> Any:
    """``get_preset(name)[key]``: what the bundle configs call for ``image_size`` and ``learning_rate``."""
    return get_preset(name)[key]
