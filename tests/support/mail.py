"""E-mail as the workers send it, for tests: Django's file-based backend into a folder the test
names (EMAIL_FILE_PATH in the worker's environment), read back here; and backends that are slow
or refuse like a mail server that is overloaded or down."""

from __future__ import annotations

import email
import os
import smtplib
import time
from collections.abc import Sequence
from email.message import Message
from pathlib import Path

from django.core.mail.backends.filebased import EmailBackend as FileBackend
from django.core.mail.message import EmailMessage

from tests.support import control

FILE_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
SLOW_BACKEND = "tests.support.mail.SlowBackend"
GATED_BACKEND = "tests.support.mail.GatedBackend"
MAIL_UP = "mail:up"
MAIL_REFUSED = "mail:refused"
SEPARATOR = "\n" + "-" * 79 + "\n"


def worker_mail_env(folder: Path, backend: str = FILE_BACKEND) -> dict[str, str]:
    return {"EMAIL_BACKEND": backend, "EMAIL_FILE_PATH": str(folder)}


def mails(folder: Path) -> list[Message]:
    """Every message the file-based backend wrote into `folder`, oldest file first."""
    if not folder.exists():
        return []
    found = []
    for path in sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime_ns):
        for chunk in path.read_text().split(SEPARATOR):
            if chunk.strip():
                found.append(email.message_from_string(chunk))
    return found


class SlowBackend(FileBackend):
    """Writes the messages after TEST_MAIL_DELAY_SECONDS (default 3): a slow mail server."""

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        time.sleep(float(os.environ.get("TEST_MAIL_DELAY_SECONDS", "3")))
        return super().send_messages(email_messages)


class GatedBackend(FileBackend):
    """Refuses (SMTPServerDisconnected, counted in the control channel's "mail:refused") until the
    test sets "mail:up": a mail server that is down, then comes back."""

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        if not control.is_set(MAIL_UP):
            control.bump(MAIL_REFUSED)
            raise smtplib.SMTPServerDisconnected("the test's mail server is down")
        return super().send_messages(email_messages)
