"""Django settings. Every tunable comes from the environment (see README, "Configuration")."""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from orchestrator.infra.config import env_bool, env_broker_url, env_float, env_int, env_list, env_postgres, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("VAR_DIR", str(BASE_DIR / "var")))

SECRET_KEY = env_str("DJANGO_SECRET_KEY", "dev-only-insecure-secret-key-change-me-in-production")
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "orchestrator.infra",
    "orchestrator.engine",
    "orchestrator.operations",
    "orchestrator.automations",
    "relayer",
    "vaults",
    "approvals",
    "orchestrator.devtools",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files are answered here, before sessions, auth and the database are touched.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "orchestrator.infra.observability.CorrelationIdMiddleware",
    "orchestrator.infra.validation.RequestTextMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "orchestrator.urls"
WSGI_APPLICATION = "orchestrator.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Without DATABASE_URL and CELERY_BROKER_URL, `make run` starts embedded PostgreSQL and Valkey
# servers on these ports (orchestrator/devtools/devstack/) and every process uses them.
EMBEDDED_POSTGRES_PORT = env_int("EMBEDDED_POSTGRES_PORT", 15432, minimum=1, maximum=65535)
EMBEDDED_REDIS_PORT = env_int("EMBEDDED_REDIS_PORT", 16379, minimum=1, maximum=65535)

# PostgreSQL only, everywhere: row locks (SELECT ... FOR UPDATE [SKIP LOCKED]) are what
# serialize workflow steps and nonces (config.env_postgres refuses any other database).
DATABASES = {
    "default": env_postgres(
        "DATABASE_URL", f"postgres://postgres@127.0.0.1:{EMBEDDED_POSTGRES_PORT}/vault_orchestrator"
    )
}
# Every process keeps a bounded pool (psycopg_pool through Django): web threads and worker
# processes take a connection per request or task and give it back, so the server's connection
# count is at most the sum of the pools' max sizes, however many requests arrive. Size
# DB_POOL_MAX_SIZE to a web process's threads (a request waits up to DB_POOL_TIMEOUT for a
# free connection, then fails); a Celery pool child runs one task at a time and uses one. With
# the database down, a query also waits DB_POOL_TIMEOUT (the pool retries in the background and
# logs each failed attempt's cause at WARNING) and then fails with "couldn't get a connection".
# Pools never cross a fork (orchestrator/infra/dbpool.py).
DB_POOL_MIN_SIZE = env_int("DB_POOL_MIN_SIZE", 1, minimum=0)
DB_POOL_MAX_SIZE = env_int("DB_POOL_MAX_SIZE", 8, minimum=1)
DB_POOL_TIMEOUT = env_float("DB_POOL_TIMEOUT", 10.0, minimum=0.1)
# A pool closes connections above its minimum that sat idle this long: a burst's connections
# do not stay open (one server process each) for the rest of the day.
DB_POOL_MAX_IDLE = env_float("DB_POOL_MAX_IDLE", 120.0, minimum=1)
if DB_POOL_MIN_SIZE > DB_POOL_MAX_SIZE:
    raise ImproperlyConfigured(
        f"Environment variables DB_POOL_MIN_SIZE={DB_POOL_MIN_SIZE} and DB_POOL_MAX_SIZE={DB_POOL_MAX_SIZE}: "
        "the minimum must not exceed the maximum."
    )
# Django refuses persistent connections with a pool: the pool keeps them (and retires each
# after an hour, psycopg_pool's max_lifetime).
DATABASES["default"]["CONN_MAX_AGE"] = 0
# The pool checks a connection with an empty query as it hands it out (web: once per request;
# a worker child keeps its connection across tasks, see CELERY_DB_REUSE_MAX): after a database
# restart an idle pooled connection is broken, and without the check each would fail a request.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DATABASES["default"].setdefault("OPTIONS", {}).update(
    {
        "connect_timeout": env_int("DB_CONNECT_TIMEOUT", 5, minimum=1),
        # A stuck query must not pin a worker forever; steps are short by design.
        "options": f"-c statement_timeout={env_int('DB_STATEMENT_TIMEOUT_MS', 30000, minimum=0)}",
        "pool": {
            "min_size": DB_POOL_MIN_SIZE,
            "max_size": DB_POOL_MAX_SIZE,
            "timeout": DB_POOL_TIMEOUT,
            "max_idle": DB_POOL_MAX_IDLE,
        },
    }
)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# `manage.py collectstatic --noinput` fills it (`make run` does, before gunicorn starts); the web
# process serves it itself through WhiteNoise, with DJANGO_DEBUG=0 too. Hashed names (the
# manifest) let browsers cache the files for good; tests/settings.py uses the plain storage.
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# --- REST API -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    # DRF's `Authorization: Token ...`, looked up by the token's hash (orchestrator/infra/tokens.py).
    "DEFAULT_AUTHENTICATION_CLASSES": ["orchestrator.infra.tokens.HashedTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["orchestrator.infra.validation.StorableJSONParser"],
    "DEFAULT_SCHEMA_CLASS": "orchestrator.infra.autoschema.AutoSchema",
    "EXCEPTION_HANDLER": "orchestrator.infra.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Vault Orchestrator API",
    "DESCRIPTION": "Automation, vault and workflow API. docs/api.md in the repository describes the contract.",
    "VERSION": "1",
    # 3.1 for propertyNames: the keys of tokenInputs and tokenLimits are addresses.
    "OAS_VERSION": "3.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI's files come from the sidecar package: the docs page works offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    # Every answer has its serializer and every error status its body (orchestrator/infra/schema.py);
    # tests/e2e/test_openapi_fuzz.py holds the live app to it.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "orchestrator.automations.schema.served_chains_enum",
    ],
}

# --- Celery ---------------------------------------------------------------------------------
# Redis (Valkey) or RabbitMQ, the brokers production runs (config.env_broker_url refuses others).
CELERY_BROKER_URL = env_broker_url("CELERY_BROKER_URL", f"redis://127.0.0.1:{EMBEDDED_REDIS_PORT}/0")
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {
    # Redis redelivers unacknowledged messages after this; it must exceed the longest task.
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=60),
}
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 300, minimum=1)
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 270, minimum=1)
CELERY_WORKER_PREFETCH_MULTIPLIER = env_int("CELERY_PREFETCH_MULTIPLIER", 4, minimum=1)
CELERY_TASK_DEFAULT_QUEUE = "workflows"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Still needed with the pool. Without it Celery's Django fixup "closes the database" before and
# after every task, and in a prefork child that closes the whole pool (celery.fixups.django,
# _close_database): a new PostgreSQL connection per workflow step, which costs more than the
# step. With it a child keeps its pooled connection for this many tasks, then closes its pool
# and opens a new one (which also retires old connections, as CONN_MAX_AGE did).
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1000, minimum=0)
CELERY_TIMEZONE = "UTC"

# --- Workflow engine ------------------------------------------------------------------------
# A run in an active phase with no progress for this long is re-enqueued by the sweep.
WORKFLOW_STALL_SECONDS = env_float("WORKFLOW_STALL_SECONDS", 120.0, minimum=1)
# The stall rule operators see (metrics, alerts, the dashboard): a run is stalled when it has
# been pending (not final, its step due) for longer than the first threshold AND has not
# changed (no journal entry, no phase change) for longer than the second (docs/engine.md, "Stalled runs").
WORKFLOW_STALL_PENDING_SECONDS = env_float("WORKFLOW_STALL_PENDING_SECONDS", 300.0, minimum=1)
WORKFLOW_STALL_NO_MUTATION_SECONDS = env_float("WORKFLOW_STALL_NO_MUTATION_SECONDS", WORKFLOW_STALL_SECONDS, minimum=1)
# How often beat runs the sweep (due timers and stalled runs).
WORKFLOW_SWEEP_SECONDS = env_float("WORKFLOW_SWEEP_SECONDS", 5.0, minimum=0.5)
# Delays longer than this are kept in the database and woken by the sweep, never as a Celery
# countdown: with Redis, a countdown longer than the visibility timeout is delivered repeatedly.
WORKFLOW_MAX_COUNTDOWN_SECONDS = env_float("WORKFLOW_MAX_COUNTDOWN_SECONDS", 60.0, minimum=0)
# A worker that finishes a step whose successor is due at once runs up to this many further
# steps itself (each still one journaled transaction under the row lock) rather than paying a
# broker round trip per step; 0 sends every step through the broker. The time cap keeps one
# long workflow from holding a worker while other runs wait.
WORKFLOW_INLINE_STEPS = env_int("WORKFLOW_INLINE_STEPS", 16, minimum=0)
WORKFLOW_INLINE_SECONDS = env_float("WORKFLOW_INLINE_SECONDS", 2.0, minimum=0)
# A step's message is acknowledged when its delivery ends, and sent again at once when the pool
# process running it dies (docs/engine.md, "Dead workers in atomic steps"). A step whose
# deliveries keep coming back (one that kills its process every time) has each further one
# after this many counted as a failed attempt, so its retry policy dead-letters it.
WORKFLOW_MAX_REDELIVERIES = env_int("WORKFLOW_MAX_REDELIVERIES", 2, minimum=0)
# /readyz fails when beat's last heartbeat (sent with every sweep) is older than this.
BEAT_HEARTBEAT_MAX_AGE_SECONDS = env_float("BEAT_HEARTBEAT_MAX_AGE_SECONDS", 60.0, minimum=1)
# Every worker writes its heartbeat row this often; /metrics counts a worker alive for 3 periods.
WORKER_HEARTBEAT_SECONDS = env_float("WORKER_HEARTBEAT_SECONDS", 10.0, minimum=0.5)
WORKFLOW_SWEEP_BATCH = env_int("WORKFLOW_SWEEP_BATCH", 500, minimum=1)

# --- Relayer and keys -----------------------------------------------------------------------
# "2:<base64 32 bytes>,1:<base64 ...>": the highest version encrypts, older ones decrypt until
# `manage.py keys rotate-master`. Unset: a development key is generated under VAR_DIR.
KEY_MASTER_KEYS = env_str("KEY_MASTER_KEYS", "")
RPC_TIMEOUT_SECONDS = env_float("RPC_TIMEOUT_SECONDS", 10.0, minimum=0.1)
# eth_feeHistory answers are reused per chain for this long (one call per chain, not per tx).
RELAYER_FEE_CACHE_SECONDS = env_float("RELAYER_FEE_CACHE_SECONDS", 2.0, minimum=0)
RELAYER_MAX_ATTEMPTS = env_int("RELAYER_MAX_ATTEMPTS", 8, minimum=1)
RELAYER_RETRY_BASE_SECONDS = env_float("RELAYER_RETRY_BASE_SECONDS", 1.0, minimum=0.01)
RELAYER_RETRY_MAX_SECONDS = env_float("RELAYER_RETRY_MAX_SECONDS", 60.0, minimum=0.01)
RELAYER_MONITOR_SECONDS = env_float("RELAYER_MONITOR_SECONDS", 5.0, minimum=0.5)
RELAYER_LOW_BALANCE_WEI = env_int("RELAYER_LOW_BALANCE_WEI", 10**16, minimum=0)
# On a development chain (anvil's 31337, or marked in the admin) a new relayer key is topped up
# to this from the node's first prefunded account, so a demo's relays can pay gas. 0: never.
DEV_FUNDING_WEI = env_int("DEV_FUNDING_WEI", 10 * 10**18, minimum=0)
# Names of failpoints to trigger once (tests only): the worker process kills itself there.
FAILPOINTS = env_list("FAILPOINTS", [])
FAILPOINTS_DIR = env_str("FAILPOINTS_DIR", str(VAR_DIR / "failpoints"))
# How long a relay step (an RPC call) may run before another worker may take it over.
RELAYER_STEP_LEASE_SECONDS = env_float("RELAYER_STEP_LEASE_SECONDS", 60.0, minimum=1)
# Most pending requests of one chain taken into one batch (one nonce lock per signer in it, one
# JSON-RPC round trip per step). Nodes cap JSON-RPC batches too (geth: 1000 calls); stay well below.
RELAYER_BATCH_SIZE = env_int("RELAYER_BATCH_SIZE", 100, minimum=1)
# At most one batch per chain this often (seconds; 0: as often as the lane is free). Under load
# requests then gather into bigger batches, each costing about the same CPU; a lone request on a
# quiet lane is batched at once (relayer/services/lanes.py, lane_pace).
RELAYER_BATCH_INTERVAL_SECONDS = env_float("RELAYER_BATCH_INTERVAL_SECONDS", 0.1, minimum=0)
# A request no batch took after this long lost its lane kick; the monitor kicks the lane again.
RELAYER_ORPHAN_SECONDS = env_float("RELAYER_ORPHAN_SECONDS", 5.0, minimum=0.5)
# A batch that has not broadcast this long after it formed no longer keeps the next one waiting.
RELAYER_LANE_HOLD_SECONDS = env_float("RELAYER_LANE_HOLD_SECONDS", 10.0, minimum=0.1)

# --- Vaults and approvals -------------------------------------------------------------------
FEED_MAX_AGE_SECONDS = env_int("FEED_MAX_AGE_SECONDS", 300, minimum=1)
FEED_CLOCK_SKEW_SECONDS = env_int("FEED_CLOCK_SKEW_SECONDS", 30, minimum=0)
FLOW_A_DISPATCH_SECONDS = env_float("FLOW_A_DISPATCH_SECONDS", 10.0, minimum=1)
ORACLE_PULL_SECONDS = env_float("ORACLE_PULL_SECONDS", 30.0, minimum=1)
# Serve a signed demo feed at /demo/oracle/feed (make run only; never in production).
DEMO_ORACLE = env_bool("DEMO_ORACLE", False)
PROPOSAL_EXPIRY_SWEEP_SECONDS = env_float("PROPOSAL_EXPIRY_SWEEP_SECONDS", 60.0, minimum=1)
# How long a rebalance waiting on its relays goes before it looks again by itself, in case a
# relay's wake-up was lost. Longer than WORKFLOW_MAX_COUNTDOWN_SECONDS on purpose: then no
# broker message is sent for it and the sweep starts the run when due. Measured: a 10 s poll
# sent ~1.75 countdown messages per rebalance that almost always found the run finished, and
# the workers holding them raised Flow A's p50 from 47 to 57 ms at 5 feeds/s.
FLOW_SETTLE_POLL_SECONDS = env_float("FLOW_SETTLE_POLL_SECONDS", 90.0, minimum=1)
# Links in notifications point here.
PUBLIC_BASE_URL = env_str("PUBLIC_BASE_URL", "http://127.0.0.1:8000").rstrip("/")
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "vault-orchestrator@localhost")
PROPOSAL_TTL_SECONDS = env_int("PROPOSAL_TTL_SECONDS", 3 * 24 * 3600, minimum=60)
# Where the file-based e-mail backend (EMAIL_BACKEND=django.core.mail.backends.filebased.EmailBackend) writes.
EMAIL_FILE_PATH = env_str("EMAIL_FILE_PATH", str(VAR_DIR / "mail"))
# An e-mail that fails (SMTP down) is sent again by its task up to this many times, with backoff.
NOTIFY_MAX_ATTEMPTS = env_int("NOTIFY_MAX_ATTEMPTS", 8, minimum=1)

# --- Alerts (docs/operations.md, "Alerts") --------------------------------------------------------
# Beat evaluates every rule this often; a firing or resolved alert is delivered once per channel.
ALERTS_EVALUATE_SECONDS = env_float("ALERTS_EVALUATE_SECONDS", 15.0, minimum=1)
# trigger_late: a firing sent (or still unsent) this long after it was due, within the window.
ALERTS_TRIGGER_LATE_SECONDS = env_float("ALERTS_TRIGGER_LATE_SECONDS", 30.0, minimum=1)
ALERTS_TRIGGER_LATE_WINDOW_SECONDS = env_float("ALERTS_TRIGGER_LATE_WINDOW_SECONDS", 300.0, minimum=1)
# proposal_expiring: a pending proposal that expires within this long.
ALERTS_PROPOSAL_EXPIRY_SECONDS = env_float("ALERTS_PROPOSAL_EXPIRY_SECONDS", 6 * 3600.0, minimum=1)
# rpc_down: an enabled chain whose RPC does not answer eth_blockNumber within this long.
ALERTS_RPC_TIMEOUT_SECONDS = env_float("ALERTS_RPC_TIMEOUT_SECONDS", 3.0, minimum=0.1)
# Deliveries: the webhook call's timeout, attempts before a delivery is marked failed, and how long
# a pending delivery nobody holds waits before the evaluator enqueues it again (a worker died).
ALERTS_WEBHOOK_TIMEOUT_SECONDS = env_float("ALERTS_WEBHOOK_TIMEOUT_SECONDS", 5.0, minimum=0.1)
ALERTS_DELIVERY_MAX_ATTEMPTS = env_int("ALERTS_DELIVERY_MAX_ATTEMPTS", 8, minimum=1)
ALERTS_DELIVERY_LEASE_SECONDS = env_float("ALERTS_DELIVERY_LEASE_SECONDS", 60.0, minimum=1)
ALERTS_DELIVERY_STALE_SECONDS = env_float("ALERTS_DELIVERY_STALE_SECONDS", 120.0, minimum=1)

# --- Automations (docs/automations.md) ------------------------------------------------------------
# Plain-http hook destinations, and ones that resolve to loopback, private or link-local
# addresses (SSRF), are refused unless these are on (development and tests only).
AUTOMATION_ALLOW_INSECURE_DESTINATIONS = env_bool("AUTOMATION_ALLOW_INSECURE_DESTINATIONS", DEBUG)
AUTOMATION_ALLOW_PRIVATE_DESTINATIONS = env_bool("AUTOMATION_ALLOW_PRIVATE_DESTINATIONS", DEBUG)
# Hook calls: per-call timeout, the largest answer read, and retries of timeouts and 5xx.
AUTOMATION_HOOK_TIMEOUT_SECONDS = env_float("AUTOMATION_HOOK_TIMEOUT_SECONDS", 5.0, minimum=0.1)
AUTOMATION_HOOK_MAX_BYTES = env_int("AUTOMATION_HOOK_MAX_BYTES", 65536, minimum=1024)
AUTOMATION_HOOK_MAX_ATTEMPTS = env_int("AUTOMATION_HOOK_MAX_ATTEMPTS", 5, minimum=1)
AUTOMATION_HOOK_RETRY_BASE_SECONDS = env_float("AUTOMATION_HOOK_RETRY_BASE_SECONDS", 2.0, minimum=0.01)
AUTOMATION_HOOK_RETRY_MAX_SECONDS = env_float("AUTOMATION_HOOK_RETRY_MAX_SECONDS", 120.0, minimum=0.01)
# Firings per delivery task, hook calls in flight at once per worker process (threads), and
# firings per dispatcher batch.
AUTOMATION_DELIVERY_BATCH = env_int("AUTOMATION_DELIVERY_BATCH", 100, minimum=1)
AUTOMATION_HOOK_CONCURRENCY = env_int("AUTOMATION_HOOK_CONCURRENCY", 32, minimum=1)
# A batch is four statements however large (services/interval_batch.py); 1,000 due firings in
# one transaction cost less than in two (docs/benchmarks.md, "bench triggers").
AUTOMATION_DISPATCH_BATCH = env_int("AUTOMATION_DISPATCH_BATCH", 1000, minimum=1)
# How long the validator's countersignature of a task through a Safe's policy module holds: the
# module refuses it (ValidationExpired) once the chain's time passes the check's time plus this.
AUTOMATION_VALIDATION_TTL_SECONDS = env_int("AUTOMATION_VALIDATION_TTL_SECONDS", 300, minimum=30)
# How long a delivery holds its firings before the sweep may hand them to another worker (a
# killed worker's firings are sent again after this). Must exceed the hook timeout.
AUTOMATION_DELIVERY_LEASE_SECONDS = env_float("AUTOMATION_DELIVERY_LEASE_SECONDS", 60.0, minimum=1)
# Beat periods of the interval dispatcher (also hands stale firings to a new worker) and the
# FILTER log poller.
AUTOMATION_DISPATCH_SECONDS = env_float("AUTOMATION_DISPATCH_SECONDS", 1.0, minimum=1)
# The dispatcher claims subscriptions due this far ahead and delivers them when due, so a
# firing is not late by the beat tick's period. More than AUTOMATION_DISPATCH_SECONDS.
AUTOMATION_LOOKAHEAD_SECONDS = env_float("AUTOMATION_LOOKAHEAD_SECONDS", 2.0, minimum=0)
AUTOMATION_POLL_SECONDS = env_float("AUTOMATION_POLL_SECONDS", 2.0, minimum=1)
# A reorg deeper than a chain's confirmation depth rewinds the log poller this many blocks.
AUTOMATION_REORG_REWIND_BLOCKS = env_int("AUTOMATION_REORG_REWIND_BLOCKS", 64, minimum=1)

# --- Retention (docs/operations.md, "Retention") --------------------------------------------
# How long each kind of record is kept, in days; 0 keeps it forever. Only what is finished is
# pruned: a firing once delivered and its run final, a run's step journal once the run is final,
# audit entries once exported to RETENTION_EXPORT_DIR.
RETENTION_FIRINGS_DAYS = env_int("RETENTION_FIRINGS_DAYS", 90, minimum=0)
RETENTION_STEP_JOURNAL_DAYS = env_int("RETENTION_STEP_JOURNAL_DAYS", 30, minimum=0)
RETENTION_AUDIT_DAYS = env_int("RETENTION_AUDIT_DAYS", 400, minimum=0)
# Whole days, so never below the API's promise to replay an Idempotency-Key for a day (docs/api.md).
RETENTION_IDEMPOTENCY_DAYS = env_int("RETENTION_IDEMPOTENCY_DAYS", 30, minimum=0)
RETENTION_EXPORT_DIR = Path(env_str("RETENTION_EXPORT_DIR", str(VAR_DIR / "audit-export")))
# How often beat runs the pruner; rows per batch (one short transaction each), the pause between
# batches, the most rows one run deletes per kind and the seconds it spends in all (well inside
# CELERY_TASK_SOFT_TIME_LIMIT); the next run goes on where it stopped.
RETENTION_PRUNE_SECONDS = env_float("RETENTION_PRUNE_SECONDS", 3600.0, minimum=60)
RETENTION_BATCH = env_int("RETENTION_BATCH", 1000, minimum=1, maximum=50_000)
RETENTION_BATCH_PAUSE_SECONDS = env_float("RETENTION_BATCH_PAUSE_SECONDS", 0.05, minimum=0)
RETENTION_MAX_ROWS = env_int("RETENTION_MAX_ROWS", 200_000, minimum=1)
RETENTION_MAX_SECONDS = env_float("RETENTION_MAX_SECONDS", 120.0, minimum=1)

# --- Chain (local anvil for development and tests) ------------------------------------------
ANVIL_PORT = env_int("ANVIL_PORT", 8545, minimum=1, maximum=65535)
CHAIN_RPC_URL = env_str("CHAIN_RPC_URL", f"http://127.0.0.1:{ANVIL_PORT}")
# The chain row `manage.py chain seed` (and every migrate) creates for CHAIN_RPC_URL.
CHAIN_ID = env_int("CHAIN_ID", 31337, minimum=1)
CHAIN_NAME = env_str("CHAIN_NAME", "anvil")
CHAIN_CONFIRMATIONS = env_int("CHAIN_CONFIRMATIONS", 1, minimum=0)
CHAIN_POLL_SECONDS = env_float("CHAIN_POLL_SECONDS", 1.0, minimum=0.05)
CHAIN_STUCK_SECONDS = env_float("CHAIN_STUCK_SECONDS", 30.0, minimum=0.1)

# --- Logging --------------------------------------------------------------------------------
LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    # Otherwise logging.config fails with "Unable to configure logger 'celery'", naming nothing.
    raise ImproperlyConfigured(
        f"Environment variable LOG_LEVEL={LOG_LEVEL!r} must be DEBUG, INFO, WARNING, ERROR or CRITICAL."
    )
LOG_FORMAT = env_str("LOG_FORMAT", "text")
if LOG_FORMAT not in {"text", "json"}:
    raise ImproperlyConfigured(f"Environment variable LOG_FORMAT={LOG_FORMAT!r} must be text or json.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"correlation": {"()": "orchestrator.infra.observability.CorrelationIdFilter"}},
    "formatters": {
        "text": {
            "format": "%(asctime)s %(levelname)s %(name)s [%(correlation_id)s] %(message)s",
        },
        "json": {"()": "orchestrator.infra.observability.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["correlation"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "httpx": {"level": "WARNING"},  # one INFO line per request drowns the rest
        "celery": {"level": LOG_LEVEL},
    },
}
