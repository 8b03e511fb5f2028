"""A model's input channels: the modalities, plus one symmetry map per modality when enabled, for the
slice itself and each of its ``context`` neighbours on either side (2.5D).

Light on purpose (no torch, no Lightning): the config resolver ``bl.in_channels`` uses it.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["in_channels_for"]


def in_channels_for(modalities: Sequence[str], symmetry: bool, context: int = 0) -> int:
    """Input channels of a model fed ``modalities`` (and one symmetry map per modality), for a slice and
    its ``context`` neighbours on each side.

    Example:
        >>> in_channels_for(["flair", "t1", "t1c", "t2"], symmetry=True)
        8
        >>> in_channels_for(["flair", "t1", "t1c", "t2"], symmetry=True, context=1)
        24
    """
    return len(modalities) * (2 if symmetry else 1) * (2 * int(context) + 1)
