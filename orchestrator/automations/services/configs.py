"""Executors and automation configs: registration, EIP-712 signed creation and deletion."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, transaction
from django.utils import timezone
from eth_utils import to_checksum_address

from orchestrator.automations.errors import ConfigDeleted, ConfigExists, InvalidSignature, SignatureReplayed
from orchestrator.automations.models import (
    AutomationConfig,
    ConfigStatus,
    Executor,
    SourceType,
    SubscriptionStatus,
    UsedSignature,
)
from orchestrator.automations.services.destinations import DestinationRefused, destination_check
from orchestrator.automations.typed_data import kernel_action_recover
from orchestrator.infra.sealing import SealedSecret
from orchestrator.infra.signatures import MalformedSignature, Recovered
from relayer.keys import key_manager, master_keys, secret_open, secret_seal
from relayer.models import KeyPurpose
from relayer.services.funding import dev_funding_after_commit

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def executor_register(*, owner: User, address: str, name: str, metadata: dict[str, Any]) -> Executor:
    return Executor.objects.create(owner=owner, address=to_checksum_address(address), name=name, metadata=metadata)


@dataclass(frozen=True)
class NewConfig:
    config: AutomationConfig
    hmac_key: str  # returned to the client once, never stored in the clear


def config_create(
    *,
    executor: Executor,
    source_type: str,
    source_value: int | dict[str, Any],
    base_url: str,
    verify_payload: bool,
    relayer_count: int,
    autosign: bool,
    signature: str,
    allowed_targets: list[str] | None = None,
) -> NewConfig:
    """Checks in the documented order (docs/api.md, "Configs"): a destination that is not
    allowed is part of a malformed body (400 DestinationRefused); the signature must recover to
    the executor (401 invalid_signature), must not have been used (409 signature_replayed), and
    the executor must have no active config (409 config_exists). Raises those DomainErrors.
    "Used" means what was signed (signer and digest), whatever the encoding of the signature."""
    try:
        destination_check(base_url)
    except ValueError as exc:  # a URL too malformed to check (a port that is not a number, ...)
        raise DestinationRefused(str(exc)) from None
    signed = _signed_by_executor(
        executor, base_url=base_url, verify_payload=verify_payload, action="CREATE", signature=signature
    )
    if UsedSignature.objects.filter(signer=signed.signer, digest=signed.digest).exists():
        raise SignatureReplayed()
    if AutomationConfig.objects.filter(executor=executor, status=ConfigStatus.ACTIVE).exists():
        raise ConfigExists()
    interval = source_value if isinstance(source_value, int) and source_type == SourceType.INTERVAL else None
    log_filter = source_value if isinstance(source_value, dict) and source_type == SourceType.FILTER else None
    hmac_key = secrets.token_hex(32)
    keys = key_manager()
    try:
        with transaction.atomic():
            verifying = keys.create_key(purpose=KeyPurpose.OPERATOR, label=f"verifying key of {executor.registry_id}")
            executor_key = (
                keys.create_key(purpose=KeyPurpose.EXECUTOR, label=f"autosign for {executor.registry_id}")
                if autosign
                else None
            )
            config = AutomationConfig(
                executor=executor,
                source_type=source_type,
                base_url=base_url,
                verify_payload=verify_payload,
                relayer_count=relayer_count,
                autosign=autosign,
                allowed_targets=allowed_targets or [],
                verifying_key=verifying,
                executor_key=executor_key,
                interval_seconds=interval,
                filter=log_filter,
            )
            _hmac_seal(config, hmac_key)
            config.save(force_insert=True)
            relayers = [
                keys.create_key(purpose=KeyPurpose.RELAYER, label=f"relayer {i + 1} of config {config.id}")
                for i in range(relayer_count)
            ]
            config.relayers.set(relayers)
            _signature_use(signed, action="CREATE", config=config)
            # Gas on development chains, sent after the commit: a config that loses the race
            # below funds nothing. The relayers serve any chain a subscription names, so every
            # development chain gets them funded.
            dev_funding_after_commit(keys=relayers)
    except IntegrityError:
        # Lost a race: the same signature or a second active config, committed meanwhile.
        raise ConfigExists(
            "This registry already has an active config, or the signature was used concurrently."
        ) from None
    return NewConfig(config=config, hmac_key=hmac_key)


def _signed_by_executor(
    executor: Executor, *, base_url: str, verify_payload: bool, action: str, signature: str
) -> Recovered:
    """Who signed what, if the executor signed this config action with a canonical signature
    (docs/api.md, "Signatures"); raises InvalidSignature otherwise, saying why."""
    try:
        signed = kernel_action_recover(
            destination_url=base_url, verify_payload=verify_payload, action=action, signature=signature
        )
    except MalformedSignature as exc:
        raise InvalidSignature(str(exc)) from None
    if signed.signer != executor.address:
        raise InvalidSignature()
    return signed


def _signature_use(signed: Recovered, *, action: str, config: AutomationConfig) -> None:
    """Records a config signature as used; IntegrityError if what it signed was used before."""
    UsedSignature.objects.create(
        signer=signed.signer, digest=signed.digest, signature=signed.signature.hex(), action=action, config=config
    )


def _hmac_seal(config: AutomationConfig, hmac_key: str) -> None:
    sealed = secret_seal(hmac_key.encode(), context=f"config:{config.id}")
    config.hmac_version, config.hmac_nonce, config.hmac_ciphertext = sealed.version, sealed.nonce, sealed.ciphertext


def config_hmac_key(config: AutomationConfig) -> str:
    sealed = SealedSecret(config.hmac_version, bytes(config.hmac_nonce), bytes(config.hmac_ciphertext))
    return secret_open(sealed, context=f"config:{config.id}").decode()


def config_hmac_reseal() -> int:
    """Re-seals the HMAC key of every config (deleted ones too: their rows still hold it) not
    under the current master key; `keys rotate-master` runs it. Returns how many."""
    current = master_keys().current
    resealed = 0
    for config_id in AutomationConfig.objects.exclude(hmac_version=current).values_list("pk", flat=True):
        with transaction.atomic():
            config = AutomationConfig.objects.select_for_update().get(pk=config_id)
            if config.hmac_version == current:
                continue
            _hmac_seal(config, config_hmac_key(config))
            config.save(update_fields=["hmac_version", "hmac_nonce", "hmac_ciphertext"])
            resealed += 1
    return resealed


def config_delete(*, config: AutomationConfig, signature: str) -> AutomationConfig:
    """Needs the executor's signature over the same typed data with action DELETE; cancels the
    config's subscriptions (their triggers stop at once). Raises ConfigDeleted, InvalidSignature
    or SignatureReplayed."""
    if config.status != ConfigStatus.ACTIVE:
        raise ConfigDeleted()
    signed = _signed_by_executor(
        config.executor,
        base_url=config.base_url,
        verify_payload=config.verify_payload,
        action="DELETE",
        signature=signature,
    )
    now = timezone.now()
    try:
        with transaction.atomic():
            locked = AutomationConfig.objects.select_for_update().get(pk=config.pk)
            if locked.status != ConfigStatus.ACTIVE:
                raise ConfigDeleted()
            _signature_use(signed, action="DELETE", config=locked)
            locked.status, locked.deleted_at = ConfigStatus.DELETED, now
            locked.save(update_fields=["status", "deleted_at"])
            locked.subscriptions.filter(status=SubscriptionStatus.ACTIVE).update(
                status=SubscriptionStatus.CANCELLED, cancelled_at=now, next_run_at=None
            )
    except IntegrityError:
        raise SignatureReplayed() from None
    return locked
