"""Model-family registry: the one place that maps ``model_family`` to its implementation.

Entries are light (no torch import) so the config validator and the web UI can list
families and flavours cheaply; :func:`load_spec` imports the family's ``ModelSpec``
(the heavy part) on demand. Adding a family = one :func:`register_family` call plus a
``models/<family>/spec.py``; the trainer and sampler only talk to the spec.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FlavourInfo:
    name: str
    description: str
    hub_id: str | None = None  # None: built locally (the tiny flavour)


@dataclass(frozen=True)
class FamilyInfo:
    name: str
    description: str
    spec: str  # "module:attribute" of the ModelSpec class
    flavours: dict[str, FlavourInfo] = field(default_factory=dict)
    default_flavour: str = ""


_FAMILIES: dict[str, FamilyInfo] = {}
_SPECS: dict[str, object] = {}


def register_family(info: FamilyInfo) -> None:
    _FAMILIES[info.name] = info


def families() -> dict[str, FamilyInfo]:
    return dict(_FAMILIES)


def family_info(name: str) -> FamilyInfo:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model_family {name!r}; available: {sorted(_FAMILIES)}") from None


def load_spec(name: str):
    """The family's ``ModelSpec`` instance (imports torch and the model code)."""
    if name not in _SPECS:
        module_name, attribute = family_info(name).spec.split(":")
        _SPECS[name] = getattr(importlib.import_module(module_name), attribute)()
    return _SPECS[name]


register_family(
    FamilyInfo(
        name="longcat_video",
        description="LongCat-Video (Meituan) 13.6B text/image-to-video DiT; umT5-XXL text encoder, Wan 2.1 VAE",
        spec="frametuner.models.longcat_video.spec:LongCatVideoSpec",
        flavours={
            "final": FlavourInfo("final", "the released text-to-video + image-to-video checkpoint", "meituan-longcat/LongCat-Video"),
            "tiny": FlavourInfo("tiny", "a small random-weight model of the same architecture, built locally (CPU demos and tests)"),
        },
        default_flavour="final",
    )
)
