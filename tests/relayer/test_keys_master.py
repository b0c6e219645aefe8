"""relayer/keys.py, master keys: KEY_MASTER_KEYS parsing, the development key, and
re-encryption under a new version."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from orchestrator.automations.models import AutomationConfig
from orchestrator.automations.services.configs import config_hmac_key
from orchestrator.infra.models import IdempotencyRecord
from relayer.keys import key_manager, master_keys
from relayer.models import KeyPurpose, SigningKey
from tests.support.automations import api_client, signed_config_body
from tests.support.relays import (
    Configure,
    assert_cannot_sign,
    assert_no_key_material,
    assert_signs_for,
    b64_key,
    private_key,
    run_command,
)

pytestmark = pytest.mark.usefixtures("master")  # tests/relayer/conftest.py: a master key of the test's own


def rotation_counts(out: str) -> dict[str, int]:
    """`keys rotate-master` prints "<kind>: <n> re-sealed" per kind, then a closing line."""
    lines = [line.rpartition(" re-sealed")[0] for line in out.strip().splitlines()[:-1]]
    return {kind: int(n) for kind, _, n in (line.rpartition(": ") for line in lines)}


@pytest.mark.django_db
def test_rotate_master_re_encrypts_every_key_under_the_new_version(master: Configure) -> None:
    old, new = b64_key(), b64_key()
    master(f"1:{old}")
    created = [key_manager().create_key(purpose=purpose) for purpose in KeyPurpose.values]
    before = {key.pk: (bytes(key.ciphertext), bytes(key.nonce), private_key(key)) for key in created}

    master(f"2:{new},1:{old}")
    assert master_keys().current == 2
    out, _ = run_command("keys", "rotate-master")
    assert rotation_counts(out) == {"signing keys": len(created), "idempotency answers": 0, "config HMAC keys": 0}
    assert out.strip().endswith("everything sealed is under master key v2: the older ones may go")

    rotated = list(SigningKey.objects.all())
    assert {key.pk for key in rotated} == set(before)
    for key in rotated:
        ciphertext, nonce, secret = before[key.pk]
        assert key.master_key_version == 2 and key.rotated_at is not None
        assert bytes(key.ciphertext) != ciphertext and bytes(key.nonce) != nonce
        assert private_key(key) == secret  # the same private key, so the same address
        assert_signs_for(key)
        for value in (key.ciphertext, key.nonce):
            assert_no_key_material(bytes(value), secret)

    out, _ = run_command("keys", "rotate-master")
    assert set(rotation_counts(out).values()) == {0}

    master(f"2:{new}")  # the old master key retired
    for key in SigningKey.objects.all():
        assert_signs_for(key)
    assert key_manager().create_key(purpose="relayer").master_key_version == 2

    master(f"1:{old}")  # a deployment that still has only the old one
    for key in SigningKey.objects.filter(pk__in=before):
        error = assert_cannot_sign(key)
        assert "version 2 is not configured" in str(error)

    master(f"2:{b64_key()}")  # a wrong key under the right version number
    for key in SigningKey.objects.filter(pk__in=before):
        assert "does not decrypt" in str(assert_cannot_sign(key))


@pytest.mark.django_db
def test_the_highest_version_encrypts_whatever_the_order_in_the_setting(master: Configure) -> None:
    master(f"1:{b64_key()},3:{b64_key()}, 2:{b64_key()}")
    assert master_keys().current == 3
    assert sorted(master_keys().keys) == [1, 2, 3]
    key = key_manager().create_key(purpose="operator")
    assert key.master_key_version == 3
    assert_signs_for(key)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("1:not base64!", id="not-base64"),
        pytest.param("1:@@@@", id="not-base64-alphabet"),
        pytest.param(f"1:{b64_key(16)}", id="16-bytes"),
        pytest.param(f"1:{b64_key(33)}", id="33-bytes"),
        pytest.param(f"0:{b64_key()}", id="version-0"),
        pytest.param(f"-1:{b64_key()}", id="version-negative"),
        pytest.param(f"x:{b64_key()}", id="version-not-a-number"),
        pytest.param(b64_key(), id="no-version"),
        pytest.param("1:", id="empty-key"),
        pytest.param(",", id="empty-list"),
        pytest.param("   ", id="blank"),
        pytest.param(f"2:{b64_key()},1:{b64_key(31)}", id="one-bad-among-good"),
        pytest.param(f"1:{b64_key()},1:{b64_key()}", id="duplicate-version"),
    ],
)
def test_a_malformed_master_key_setting_is_improperly_configured(master: Configure, raw: str) -> None:
    master(raw)
    with pytest.raises(ImproperlyConfigured, match="KEY_MASTER_KEYS") as info:
        master_keys()
    for part in raw.split(","):
        material = (part.partition(":")[2] or part).strip()
        assert not material or material not in str(info.value)  # never echoes a key back


def test_without_the_setting_a_development_master_key_is_generated_once(
    master: Configure, settings: Any, tmp_path: Path
) -> None:
    settings.VAR_DIR = tmp_path / "var"
    master("")
    first = master_keys()
    path = tmp_path / "var" / "master-keys"
    assert first.current == 1 and len(first.keys[1]) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    master_keys.cache_clear()
    assert master_keys() == first  # read back, not generated again


@pytest.mark.django_db
def test_rotate_master_re_seals_config_hmac_keys_and_idempotent_answers_too(master: Configure, settings: Any) -> None:
    """Issue 14, item 3: after the rotation the old master key can go and every config still
    opens its HMAC key, every replay still answers it."""
    settings.AUTOMATION_ALLOW_PRIVATE_DESTINATIONS = True  # executor.example does not resolve here
    old, new = b64_key(), b64_key()
    master(f"1:{old}")
    client = api_client()
    bodies = [signed_config_body(client, base_url="https://executor.example") for _ in range(2)]
    answers = [client.post("/v1/config", bodies[0], format="json", HTTP_IDEMPOTENCY_KEY="k").json()]
    answers.append(client.post("/v1/config", bodies[1], format="json").json())  # no Idempotency-Key
    configs = [AutomationConfig.objects.get(pk=answer["id"]) for answer in answers]
    keys = SigningKey.objects.count()  # a verifying key and a relayer per config

    master(f"2:{new},1:{old}")
    out, _ = run_command("keys", "rotate-master")
    assert rotation_counts(out) == {"signing keys": keys, "idempotency answers": 1, "config HMAC keys": 2}
    again, _ = run_command("keys", "rotate-master")
    assert set(rotation_counts(again).values()) == {0}

    master(f"2:{new}")  # the old master key dropped, as the runbook says
    for config, answer in zip(configs, answers, strict=True):
        config.refresh_from_db()
        assert config.hmac_version == 2 and config_hmac_key(config) == answer["hmacKey"]
    assert IdempotencyRecord.objects.get().sealed_version == 2
    replay = client.post("/v1/config", bodies[0], format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert replay.status_code == 201 and replay.json() == answers[0]
    for key in SigningKey.objects.all():
        assert key.master_key_version == 2
        assert_signs_for(key)
