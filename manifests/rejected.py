"""What every stage shares: the way it says no."""

from __future__ import annotations


class Rejected(Exception):
    """A source or clip that a stage drops. It becomes a manifest row, never a crash.

    `reason` is a short stable code to group by (``no_audio_stream``); `detail` is the sentence a person reads.
    """

    def __init__(self, stage: str, reason: str, detail: str):
        super().__init__(f"{stage}: {reason}: {detail}")
        self.stage = stage
        self.reason = reason
        self.detail = detail
