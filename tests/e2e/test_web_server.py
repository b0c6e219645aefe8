"""The web process as it runs (gunicorn, DJANGO_DEBUG=0): static files through WhiteNoise after
`collectstatic`, a bounded number of database connections under concurrent requests, and no
Django debug page for any client."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import include, path

from orchestrator.devtools import processes
from tests.conftest import ARTIFACTS, _database_url, free_port
from tests.factories import TokenFactory

pytestmark = pytest.mark.django_db(transaction=True)

APP_NAME = "web-pool-test"
WORKERS, THREADS, POOL_MAX = 2, 16, 3
DEBUG_PAGE = ("DEBUG = True", "Traceback", "Using the URLconf")


@pytest.fixture(scope="module")
def web(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """gunicorn as `make run` starts it, on the test database, after `collectstatic`, with a
    small pool (POOL_MAX) and more threads than that, so that the pool is what bounds."""
    env = {
        "DJANGO_SETTINGS_MODULE": "orchestrator.settings",
        "DJANGO_DEBUG": "0",
        "VAR_DIR": str(tmp_path_factory.mktemp("var")),
        # Tags the web's sessions in pg_stat_activity.
        "DATABASE_URL": f"{_database_url()}?application_name={APP_NAME}",
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "DB_POOL_MAX_SIZE": str(POOL_MAX),
    }
    collected = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput"],
        cwd=settings.BASE_DIR,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert collected.returncode == 0, collected.stderr
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = ARTIFACTS / "logs" / f"gunicorn-{port}.log"
    server = processes.web_server(port=port, log_path=log, env=env, workers=WORKERS, threads=THREADS)
    server.start().wait_ready(timeout=60)
    yield base
    server.stop()


def _web_sessions() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [APP_NAME])
        return int(cursor.fetchone()[0])


def test_the_admin_loads_its_css_through_whitenoise_without_debug(web: str) -> None:
    page = httpx.get(f"{web}/admin/login/")
    assert page.status_code == 200
    # The manifest's hashed name, so browsers may keep it for good.
    css = re.search(r'href="(/static/admin/css/base\.[0-9a-f]{12}\.css)"', page.text)
    assert css, page.text[:2000]

    answer = httpx.get(f"{web}{css.group(1)}", headers={"Accept-Encoding": "gzip"})

    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/css")
    assert answer.headers["content-encoding"] == "gzip"
    assert "immutable" in answer.headers["cache-control"]
    assert "#header" in answer.text  # decompressed: the admin's real stylesheet


def test_unknown_paths_get_a_plain_page_or_the_api_error_never_a_debug_page(web: str) -> None:
    page = httpx.get(f"{web}/no/such/page")
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert not any(marker in page.text for marker in DEBUG_PAGE), page.text

    api = httpx.get(f"{web}/v1/no/such/thing")
    assert api.status_code == 404
    assert api.json() == {"error": {"code": "not_found", "message": "Not found."}}


def test_concurrent_requests_share_each_processs_bounded_pool(web: str) -> None:
    headers = {"Authorization": f"Token {TokenFactory.create(user__username='pool-client').key}"}

    def client() -> list[int]:
        with httpx.Client(timeout=30, headers=headers) as http:
            return [http.get(f"{web}/v1/vaults").status_code for _ in range(10)]

    peak = 0
    with ThreadPoolExecutor(max_workers=40) as clients:
        futures = [clients.submit(client) for _ in range(40)]
        deadline = time.monotonic() + 120
        while not all(f.done() for f in futures) and time.monotonic() < deadline:
            peak = max(peak, _web_sessions())
            time.sleep(0.005)
        statuses = [status for f in futures for status in f.result()]

    assert statuses == [200] * 400
    # 40 clients on 2 x 16 threads: without the pool every busy thread would hold a session.
    assert 2 <= peak <= WORKERS * POOL_MAX, peak


# --- 404 and 500 with DEBUG off, through Django's handlers ------------------------------------


def _boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("boom")


urlpatterns = [
    path("v1/boom", _boom),
    path("boom", _boom),
    path("", include("orchestrator.urls")),
]
handler404 = "orchestrator.infra.errors.json_not_found"
handler500 = "orchestrator.infra.errors.json_server_error"


def test_an_unexpected_error_is_a_json_500_for_the_api_and_a_plain_page_elsewhere(settings: Any) -> None:
    settings.ROOT_URLCONF = __name__
    assert settings.DEBUG is False
    client = Client(raise_request_exception=False)

    api = client.get("/v1/boom")
    assert api.status_code == 500
    assert api.json() == {"error": {"code": "server_error", "message": "Internal error; it has been logged."}}

    page = client.get("/boom")
    assert page.status_code == 500
    assert page["Content-Type"].startswith("text/html")
    assert not any(marker in page.content.decode() for marker in (*DEBUG_PAGE, "boom")), page.content
