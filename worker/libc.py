"""The C library's calls that the ``os`` module lacks, bound once, when the supervisor imports
the worker's code: a worker calls them without building ctypes objects of its own, each of
which would copy pages of the heap it shares with the supervisor. ``malloc_trim`` is glibc's
own (None elsewhere, musl for one)."""

from __future__ import annotations

import ctypes

_LIBC = ctypes.CDLL(None, use_errno=True)

prctl = _LIBC.prctl
timer_create = _LIBC.timer_create
timer_settime = _LIBC.timer_settime
malloc_trim = getattr(_LIBC, "malloc_trim", None)
