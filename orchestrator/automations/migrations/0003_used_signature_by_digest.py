# Config signatures were remembered by their hex text, so the high-s twin of a used signature,
# or the same signature with v written 0/1, counted as new (issue 14). From here on a used
# signature is keyed on what was signed: (signer, EIP-712 digest of the KernelAction), unique.
#
# Existing rows are kept, for history and because each still blocks its replay:
# - A row whose config is known is recomputed: the digest from the config's baseURL and
#   verifyPayload (stored exactly as signed) and the row's action, the signer by recovering the
#   stored signature over it (lenient recovery: a high-s row still names its signer). Its
#   `signature` text stays as it was sent.
# - The second and later rows with the same (signer, digest), replays the old check let
#   through, keep signer and digest empty (the constraint skips those): it needs one row per
#   key, and the first row already blocks that key.
# - A row that cannot be recomputed (its config gone, or a signature that recovers nothing)
#   keeps signer and digest empty too. It blocks nothing any more, but it blocked nothing in
#   other encodings before either, and a config row is never deleted by the application.
#
# The domain and types are copied here, not imported, so that the migration keeps computing
# what was signed when these rows were written.

from typing import Any

from django.db import migrations, models
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak

KERNEL_DOMAIN = {"name": "Brahma Builder Kit", "version": "1"}
KERNEL_ACTION_TYPES = {
    "KernelAction": [
        {"name": "destinationURL", "type": "string"},
        {"name": "verifyPayload", "type": "bool"},
        {"name": "action", "type": "string"},
    ]
}


def _signed(row: Any) -> tuple[str, str] | None:
    """(signer, digest) of a used signature, or None if it cannot be recomputed."""
    if row.config is None:
        return None
    message = {"destinationURL": row.config.base_url, "verifyPayload": row.config.verify_payload, "action": row.action}
    try:
        signable = encode_typed_data(domain_data=KERNEL_DOMAIN, message_types=KERNEL_ACTION_TYPES, message_data=message)
        signer = str(Account.recover_message(signable, signature=row.signature))
    except Exception:  # a signature eth-keys cannot recover from (never accepted, but be safe)
        return None
    digest = "0x" + keccak(b"\x19" + signable.version + signable.header + signable.body).hex()
    return signer, digest


def recompute(apps: Any, schema_editor: Any) -> None:
    UsedSignature = apps.get_model("automations", "UsedSignature")
    seen: set[tuple[str, str]] = set()
    for row in UsedSignature.objects.select_related("config").order_by("created_at", "pk").iterator():
        key = _signed(row)
        if key is None or key in seen:
            continue
        seen.add(key)
        row.signer, row.digest = key
        row.save(update_fields=["signer", "digest"])


class Migration(migrations.Migration):
    dependencies = [
        ("automations", "0002_firings"),
    ]

    operations = [
        migrations.AddField(
            model_name="usedsignature",
            name="digest",
            field=models.CharField(
                blank=True, default="", help_text="EIP-712 hash of the KernelAction.", max_length=66
            ),
        ),
        migrations.AddField(
            model_name="usedsignature",
            name="signer",
            field=models.CharField(blank=True, default="", max_length=42),
        ),
        migrations.AlterField(
            model_name="usedsignature",
            name="signature",
            field=models.CharField(help_text="Canonical: low s, v 27/28 (older rows: as sent).", max_length=140),
        ),
        migrations.RunPython(recompute, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="usedsignature",
            constraint=models.UniqueConstraint(
                condition=models.Q(("digest", ""), _negated=True),
                fields=("signer", "digest"),
                name="used_signature_once",
            ),
        ),
    ]
