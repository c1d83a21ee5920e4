"""The sequence words of the shared-memory regions (heartbeat slots, the lease fence, the
metrics pages): each read and written in one 8-byte access.

A sequence word is odd while its writer writes; a reader keeps a reading only if the word was
even and unchanged around it. ``struct.pack_into`` zero-fills its target before it writes the
value, so a word written with it passes through 0, an even value, and a reader that read 0
before and after a write took a half-written reading for a whole one. Written through a
``memoryview`` of 8-byte words, the word goes from one value to the next in one store.
"""

from __future__ import annotations

import mmap


class SequenceWords:
    """The 8-byte words of ``memory``, addressed by byte offset (a multiple of 8)."""

    def __init__(self, memory: mmap.mmap) -> None:
        self._words = memoryview(memory).cast("Q")

    def get(self, offset: int) -> int:
        return self._words[offset // 8]

    def set(self, offset: int, value: int) -> None:
        self._words[offset // 8] = value
