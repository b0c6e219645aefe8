"""Questions about the broker that the engine, the tests and operations ask."""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from amqp.exceptions import ChannelError

from orchestrator.celery import QUEUES, app


def channel(conn: Any) -> Any:
    # kombu's StdChannel type omits the queue methods every real channel has.
    return conn.default_channel


def queue_depth(name: str) -> int:
    """Messages waiting in a queue (not counting ones a worker has prefetched)."""
    with app.connection_for_write() as conn:
        try:
            _name, count, _consumers = channel(conn).queue_declare(name, passive=True)
        except ChannelError:
            return 0  # Redis drops an empty queue's key: nothing waits in it
    return int(count)


def queue_depths(*, timeout: int = 2) -> dict[str, int]:
    """Messages waiting in every queue, over one connection.

    Raises kombu's OperationalError within about `timeout` seconds when the broker does not
    answer: a scrape or a dashboard must not hang on kombu's default retry-for-ever."""
    depths: dict[str, int] = {}
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
        for name in QUEUES:
            # A channel per queue: AMQP closes a channel whose passive declare failed.
            queue_channel: Any = conn.channel()
            try:
                _name, count, _consumers = queue_channel.queue_declare(name, passive=True)
            except ChannelError:
                count = 0  # Redis drops an empty queue's key: nothing waits in it
            finally:
                with suppress(Exception):
                    queue_channel.close()
            depths[name] = int(count)
    return depths


def queues_purge() -> None:
    with app.connection_for_write() as conn:
        for name in QUEUES:
            with suppress(ChannelError):
                channel(conn).queue_purge(name)


def queues_reset() -> None:
    """Deletes the queues (their messages and every binding); workers declare them again.
    For tests, and after changing how queues are bound: a broker keeps old bindings."""
    with app.connection_for_write() as conn:
        if conn.transport_cls == "redis" or str(app.conf.broker_url).startswith("redis"):
            # kombu keeps Redis bindings in one set per exchange and deletes only those the
            # deleting channel declared itself: drop the sets, workers declare them again.
            channel(conn).client.delete(*(f"_kombu.binding.{name}" for name in QUEUES))
        for name in QUEUES:
            with suppress(ChannelError):
                channel(conn).queue_delete(name)
