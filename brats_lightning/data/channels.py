"""A model's input channels: the modalities, plus one symmetry map per modality when enabled, for the
slice itself and each of its ``context`` neighbours on either side (2.5D).

Light on purpose (no torch, no Lightning): the config resolver ``bl.in_channels`` uses it.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["in_channels_for", "modality_channels"]


def in_channels_for(modalities: Sequence[str], symmetry: bool, context: int = 0) -> int:
    """Input channels of a model fed ``modalities`` (and one symmetry map per modality), for a slice and
    its ``context`` neighbours on each side.

    Examples:
        >>> in_channels_for(["flair", "t1", "t1c", "t2"], symmetry=True)
        8
        >>> in_channels_for(["flair", "t1", "t1c", "t2"], symmetry=True, context=1)
        24
    """
    return len(modalities) * (2 if symmetry else 1) * (2 * int(context) + 1)


def modality_channels(data_config: dict) -> dict[str, list[int]]:
    """Modality -> the input channels of a prepared case that carry it: its image and symmetry map (when
    the maps are on), in every slice of the 2.5D context (the cache's order: images, then maps)."""
    modalities = list(data_config.get("modalities") or [])
    per = len(modalities) * (2 if (data_config.get("symmetry") or {}).get("enabled") else 1)
    context = int(data_config.get("context_slices", 0))
    return {
        m: [j * per + i + s * len(modalities) for j in range(2 * context + 1) for s in range(per // len(modalities))]
        for i, m in enumerate(modalities)
    }
