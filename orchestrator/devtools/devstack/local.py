"""Small things `manage.py up` asks of this machine: is a port taken, and
how a URL or a log file is shown or kept."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

HOST = "127.0.0.1"


def mask_password(url: str) -> str:
    """postgres://user:secret@host/db -> postgres://user:***@host/db (for printing)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def rotate_log(path: Path) -> None:
    # Each start's log begins empty; the previous run's is kept as .1. (Within a run, a restarted
    # child appends to its log: the deaths before a restart are what the developer reads.)
    if path.exists():
        path.replace(path.with_name(path.name + ".1"))
