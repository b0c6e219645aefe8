"""Failpoints: named places where a test can make a worker process die, once.

`failpoint("relay.after_sign")` does nothing unless FAILPOINTS names it (never set in
production). When it is named, the first process to reach it records that it fired (a file
created with O_EXCL, so exactly one process fires it, holding its pid) and kills itself with
SIGKILL, as the OOM killer would: no exception handler, no cleanup, no acknowledgement.
Removing the file arms it again (bench recovery kills at its points in turn that way)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from django.conf import settings

from orchestrator.infra.observability import current_correlation_id


def failpoint(name: str) -> None:
    if name not in settings.FAILPOINTS:
        return
    marker = Path(settings.FAILPOINTS_DIR) / name
    marker.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    # Which process died there, and in which correlation (the run it was executing), for
    # whoever looks for what it left (bench recovery): "<pid> <correlation id>".
    os.write(fd, f"{os.getpid()} {current_correlation_id()}".encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
