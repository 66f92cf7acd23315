"""The in-memory channel layer, with its expired-message sweep done at most once a second.

Channels' InMemoryChannelLayer walks every channel and group on every send and receive to
drop expired messages; with hundreds of live streams that sweep dominated the CPU profile.
Expiry is a safety net (60 s), so sweeping once a second changes nothing a user can see.
"""

from __future__ import annotations

import time

from channels.layers import InMemoryChannelLayer as BaseInMemoryChannelLayer


class InMemoryChannelLayer(BaseInMemoryChannelLayer):
    sweep_interval = 1.0

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._last_sweep = 0.0

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep < self.sweep_interval:
            return
        self._last_sweep = now
        super()._clean_expired()
