"""Large messages are converted away from the event loop, one at a time.

Decoding and resampling a 1 MiB audio frame costs ~0.1 s of CPU; on the event loop that would
stall every other client. The default executor is no better a home: it runs up to cpu+4 such
conversions at once, each holding the GIL through numpy for most of its time, which starves the
loop thread just the same. One conversion thread bounds that: big messages of all clients take
turns there (each sender waits for its own), and at most one competes with the loop at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

#: Live audio messages larger than this are converted in the conversion thread; smaller ones
#: (telephony packets, 20-100 ms frames) cost less than the hand-off.
OFF_LOOP_BYTES = 32 << 10

_T = TypeVar("_T")
_CONVERTER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audio-convert")


async def off_loop(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` in the conversion thread; its result, or the exception it raised."""
    return await asyncio.get_running_loop().run_in_executor(_CONVERTER, fn, *args)
