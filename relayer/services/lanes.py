"""Lane kicks: asking a relay worker to batch a chain's pending requests.

Every request kicks its chain's lane after it commits, but under load hundreds of requests a
second would each send a kick that finds nothing to do (measured: a quarter of the relay
workers' time at 150 tx/s). So when the broker is Redis a flag per chain marks a kick that is
queued and not yet started: a request that finds the flag set sends none, because that kick
has not looked for requests yet and will see this one (it committed before checking the flag,
and the kick clears the flag before it looks). A kick that finds the lane busy (a batch still
to sign) sets the flag again and leaves it set: that batch kicks the lane once it has signed,
clearing the flag first, so the requests that came meanwhile need no kicks of their own
(bench relayer: 135 kicks for 640 relays without it, most finding the lane busy; 30 with it). A kick
lost with its flag set blocks no one for longer than the flag's lifetime; the relayer monitor
kicks lanes whose requests wait too long. So does a batch that backs off into a retry instead of
signing (it does not kick): requests that came meanwhile wait out the flag, or the monitor.
Other brokers get a kick per request.

A request's kick is sent after its commit by a thread of the requesting process (_KickSender),
not by the request itself: the broker's round trip was a quarter of a request's time while the
relayer was busy (bench relayer, requests one after another), and requests that commit while a
kick is being sent share the next one. A process sends what it still holds before it exits, and a
Celery pool child after each task (pool children leave with os._exit); a kick lost with a killed
process is one more lost kick for the relayer monitor.

With Redis a lane is also paced: it forms at most one batch per RELAYER_BATCH_INTERVAL_SECONDS
(lane_pace), a kick sent while the interval runs is due at its end, and only one kick is due at a
time (_due_later)."""

from __future__ import annotations

import atexit
import contextvars
import logging
import os
import threading
from functools import cache

import redis
from django.conf import settings
from django.db import transaction

from relayer.models import RelayTransaction, TxPhase

logger = logging.getLogger("relayer")

LANE_TASK = "relayer.lane"
FLAG_SECONDS = 2


@cache
def _flags() -> redis.Redis | None:
    url = settings.CELERY_BROKER_URL
    if not url.startswith(("redis://", "rediss://")):
        return None
    return redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)


def _flag(chain_id: int) -> str:
    return f"relayer:lane-kick:{chain_id}"


def lane_kick(*, chain_id: int, if_waiting: bool = False) -> None:
    """After the current transaction commits, asks a relay worker to batch the chain's pending
    requests, unless a kick is already queued. Kicks are idempotent: one that finds nothing
    pending, or the lane busy, does nothing. The kick is sent by this process's kick thread
    (_KickSender); the caller does not wait for the broker.

    `if_waiting`: only if a request is waiting for a batch by then. A batch freeing its lane
    says so: a request that came while it was at work found the lane busy and committed before
    this looks, so it is seen; one that comes later kicks for itself and finds the lane free.
    (Measured: without it, most of those kicks found nothing to do.)"""
    if if_waiting:
        transaction.on_commit(lambda: _send_if_waiting(chain_id))
    else:
        transaction.on_commit(lambda: _kicks.add(chain_id))


def lane_kicks_flush(timeout: float = 5.0) -> bool:
    """Waits until every kick this process asked for is sent (or found absorbed); False if that
    took longer than `timeout`. Run at exit and after each Celery task."""
    return _kicks.flush(timeout)


class _KickSender:
    """Sends the kicks of committed requests from one thread, each chain's at most once per
    round: every request that committed before a round starts is seen by the kick it sends (or
    by the queued kick its flag stands for), so the order that makes kicks absorb each other
    holds (commit, then look at the flag)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._waiting: dict[int, contextvars.Context] = {}
        self._sending = False
        self._thread: threading.Thread | None = None

    def add(self, chain_id: int) -> None:
        # The kick is sent in the first asking request's context: its correlation id and trace
        # go with the message, as when the request sent it itself.
        context = contextvars.copy_context()
        with self._cond:
            self._waiting.setdefault(chain_id, context)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="relay-lane-kicks", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._waiting))
                chains, self._waiting = self._waiting, {}
                self._sending = True
            try:
                for chain_id, context in sorted(chains.items()):
                    try:
                        context.run(_send, chain_id)
                    except Exception:  # the broker is down: the relayer monitor kicks the lane later
                        logger.exception(
                            "relayer: could not kick the lane of chain %s; the relayer monitor will", chain_id
                        )
            finally:
                with self._cond:
                    self._sending = False
                    self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._waiting and not self._sending, timeout)


_kicks = _KickSender()
atexit.register(lane_kicks_flush)
# A forked child (a Celery pool process) starts with no thread and nothing to send: its parent's
# thread sends what the parent asked for, and a lock held at the fork would never be released.
os.register_at_fork(after_in_child=_kicks._reset)


def _send_if_waiting(chain_id: int) -> None:
    # The lane is free: a request from now on kicks for itself (a kick that found the lane busy
    # left the flag set), and one that came before is seen here.
    _flag_clear(chain_id)
    if RelayTransaction.objects.filter(chain_id=chain_id, phase=TxPhase.PENDING, workflow_run=None).exists():
        _send(chain_id)


def _send(chain_id: int) -> None:
    from orchestrator.celery import app

    flags = _flags()
    countdown = None
    if flags is not None:
        try:
            if not flags.set(_flag(chain_id), 1, nx=True, ex=FLAG_SECONDS):
                return  # a queued kick will see this request
            # Due when the lane's interval is over: a kick sooner would only send itself again.
            left = int(flags.pttl(_pace_key(chain_id)))
            countdown = left / 1000 if left > 0 else None
            if countdown is not None and not _due_later(flags, chain_id, countdown):
                return  # the lane's kick for the interval's end is on its way already
        except redis.RedisError:
            logger.warning("relayer: lane flags unavailable; kicking chain %s anyway", chain_id)
    app.send_task(LANE_TASK, kwargs={"chain_id": chain_id}, queue="relay", countdown=countdown)


def _due_later(flags: redis.Redis, chain_id: int, seconds: float) -> bool:
    """Marks the lane's one kick due at the end of its interval; False when one is marked
    already. Two kicks due at once (a request's and a batch's that has signed) found one
    batch formed by the other and sent themselves again, a chain of kicks finding nothing to
    do (bench relayer: 65 of them for 28 batches). The mark lasts until that kick starts
    (lane_kick_due_started), or a little past its due time if it is lost."""
    return bool(flags.set(_due_key(chain_id), 1, px=int(seconds * 1000) + 50, nx=True))


def lane_kick_due_started(*, chain_id: int) -> None:
    """Called by a kick as it starts: another may be sent for the interval's end."""
    _key_delete(_due_key(chain_id), chain_id)


def _due_key(chain_id: int) -> str:
    return f"relayer:lane-due:{chain_id}"


_PACE_SLACK_MS = 5


def _pace_key(chain_id: int) -> str:
    return f"relayer:lane-formed:{chain_id}"


def lane_pace(*, chain_id: int) -> float:
    """0 when the lane may form a batch now (the interval then starts), else the seconds until
    it may: at most one batch per RELAYER_BATCH_INTERVAL_SECONDS per chain. Requests that come
    faster than batches are formed wait in bigger batches, and a batch costs about as much
    CPU whether it holds 5 requests or 100 (bench relayer: 2.4 ms of worker CPU a relay in
    batches of about 20, 1.0 ms in batches of 100). A lane that has been quiet for the interval
    forms at once, so a lone request does not wait."""
    interval_ms = int(settings.RELAYER_BATCH_INTERVAL_SECONDS * 1000)
    flags = _flags()
    if flags is None or interval_ms <= 0:
        return 0.0
    key = _pace_key(chain_id)
    try:
        if flags.set(key, 1, px=interval_ms, nx=True):
            return 0.0
        left = int(flags.pttl(key))  # -2: it expired since; -1 cannot happen (set with PX)
    except redis.RedisError:
        logger.warning("relayer: lane pacing unavailable for chain %s; forming the batch now", chain_id)
        return 0.0
    # A kick due at the interval's end may run a few milliseconds early: it forms the batch
    # rather than send itself again for the rest.
    return left / 1000 if left > _PACE_SLACK_MS else 0.0


def lane_kick_later(*, chain_id: int, seconds: float) -> None:
    """A kick for when the lane's interval is over (the lane's flag stays set meanwhile, so the
    requests that come send none). Lost with its worker, the flag runs out and the next request
    kicks, or the relayer monitor does."""
    from orchestrator.celery import app

    flags = _flags()
    try:
        if flags is not None and not _due_later(flags, chain_id, seconds):
            return  # another kick is due at the interval's end
    except redis.RedisError:
        logger.warning("relayer: lane flags unavailable for chain %s; kicking it later anyway", chain_id)
    app.send_task(LANE_TASK, kwargs={"chain_id": chain_id}, queue="relay", countdown=seconds)


def lane_kick_holding(*, chain_id: int) -> None:
    """Called by the kick before it looks whether the lane is busy: while it looks, and after
    if it is (until the busy batch frees the lane, or the flag's lifetime), requests send no
    kick of their own."""
    flags = _flags()
    if flags is not None:
        try:
            flags.set(_flag(chain_id), 1, ex=FLAG_SECONDS)
        except redis.RedisError:
            logger.warning("relayer: lane flags unavailable for chain %s", chain_id)


def lane_kick_started(*, chain_id: int) -> None:
    """Called by the kick before it looks for requests: from now on, requests need a new kick."""
    _flag_clear(chain_id)


def _flag_clear(chain_id: int) -> None:
    _key_delete(_flag(chain_id), chain_id)


def _key_delete(key: str, chain_id: int) -> None:
    flags = _flags()
    if flags is not None:
        try:
            flags.delete(key)
        except redis.RedisError:
            logger.warning("relayer: lane flags unavailable for chain %s", chain_id)
