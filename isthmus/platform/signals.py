"""SIGTERM as Ctrl-C for commands that start servers (`triton-serve`, `control-plane`, `inference-server`, `up`).

Python's default SIGTERM ends the process at once: no `finally`, so the servers a command started
(tritonserver and its Python-backend stubs, which run in their own session, a local Ray cluster) are left
running under PID 1. Inside `sigterm_as_interrupt()` a SIGTERM raises KeyboardInterrupt in the main thread
instead, so the command's Ctrl-C path stops them; `kill`, systemd and container runtimes send SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

__all__ = ["sigterm_as_interrupt"]


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, the first SIGTERM raises KeyboardInterrupt (later ones are ignored while the
    cleanup runs; SIGKILL still ends it). The previous handler is restored on exit. Off the main thread
    (where Python cannot install handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []

    def interrupt(signum: int, frame: Any) -> None:
        if not received:
            received.append(signum)
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
