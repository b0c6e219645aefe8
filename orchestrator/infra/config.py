"""Reading settings from the environment.

Every tunable is an environment variable with a safe default. A value that cannot be
parsed stops start-up with a message that names the variable, rather than surfacing as
an obscure error deep inside a worker hours later.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import environ
from django.core.exceptions import ImproperlyConfigured

T = TypeVar("T")

env = environ.Env()


def _read(name: str, cast: Callable[..., T], default: T, **kwargs: Any) -> T:
    try:
        return cast(name, default=default, **kwargs)
    except (ValueError, TypeError, KeyError, environ.ImproperlyConfigured) as exc:
        raise ImproperlyConfigured(
            f"Environment variable {name}={env.str(name, default='')!r} is invalid: {exc}"
        ) from exc


def env_str(name: str, default: str) -> str:
    return _read(name, env.str, default)


def env_bool(name: str, default: bool) -> bool:
    raw = env.str(name, default="").strip().lower()
    if raw == "":
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"Environment variable {name}={raw!r} is not a boolean (use 1/0).")


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    value = _read(name, env.int, default)
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"Environment variable {name}={value} must be >= {minimum}.")
    if maximum is not None and value > maximum:
        raise ImproperlyConfigured(f"Environment variable {name}={value} must be <= {maximum}.")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    value = _read(name, env.float, default)
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"Environment variable {name}={value} must be >= {minimum}.")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    return _read(name, env.list, default)


def env_db(name: str, default: str) -> dict[str, Any]:
    try:
        config = env.db_url_config(env.str(name, default=default))
    except (ValueError, KeyError, environ.ImproperlyConfigured) as exc:
        raise ImproperlyConfigured(f"Environment variable {name} is not a database URL: {exc}") from exc
    # django-environ answers a URL without a known scheme ("garbage", "") with an empty or
    # engine-less config instead of an error; Django would then fail far from the cause.
    if not config.get("ENGINE"):
        raise ImproperlyConfigured(
            f"Environment variable {name} is not a database URL (expected e.g. postgres://user@host/db)."
        )
    return config


def env_postgres(name: str, default: str) -> dict[str, Any]:
    """A PostgreSQL database URL; any other database stops start-up.

    PostgreSQL is the only database: the engine and the relayer serialize steps and nonces
    with row locks (SELECT ... FOR UPDATE [SKIP LOCKED]), and Flow A's verify is one
    PostgreSQL statement."""
    config = env_db(name, default)
    if config["ENGINE"] != "django.db.backends.postgresql":
        scheme = env.str(name, default=default).partition(":")[0]  # not the URL: it may hold a password
        raise ImproperlyConfigured(
            f"Environment variable {name} must be a PostgreSQL URL (postgres://user@host:5432/db), "
            f"not {scheme}:...: the engine and the relayer rely on PostgreSQL's row locks."
        )
    return config


# The brokers production runs, and the engine's tests run on both; kombu's others (filesystem,
# SQLAlchemy, memory) are refused: the filesystem transport loses messages between processes.
BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps")


def env_broker_url(name: str, default: str) -> str:
    """A Celery broker URL on Redis or RabbitMQ (several, for failover, separated by `;`)."""
    url = env_str(name, default)
    for part in url.split(";"):
        scheme, separator, _ = part.strip().partition("://")
        if not separator or scheme.lower() not in BROKER_SCHEMES:
            shown = part.strip().partition(":")[0]  # not the URL: it may hold a password
            raise ImproperlyConfigured(
                f"Environment variable {name} must be a Redis or RabbitMQ URL "
                f"(redis://host:6379/0, rediss://, amqp://user:password@host:5672//, amqps://), "
                f"not {shown!r}:..."
            )
    return url
