"""A model's input channels: the modalities, plus one symmetry map per modality when enabled.

Light on purpose (no torch, no Lightning): the config resolver ``bl.in_channels`` uses it.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["in_channels_for"]


def in_channels_for(modalities: Sequence[str], symmetry: bool) -> int:
    """Input channels of a model fed ``modalities`` (and one symmetry map per modality).

    Example:
        >>> in_channels_for(["flair", "t1", "t1c", "t2"], symmetry=True)
        8
    """
    return len(modalities) * (2 if symmetry else 1)
