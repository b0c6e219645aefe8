"""The one parser for the secp256k1 signatures the system accepts (config actions, executor
signatures, oracle feeds, the verifying signature an executor checks), and recovery from it.

An ECDSA signature has more than one encoding: (r, s) and (r, n - s) both verify, with v
flipped, and v itself is written 27/28, 0/1 or, after EIP-155, 35 + 2 * chainId + {0, 1}.
Something that remembers signatures by their bytes therefore accepts the same signature again
in another encoding. So every signature is parsed here into one canonical form, and anything
else is refused (docs/api.md, "Signatures"):

    65 bytes r || s || v, 0x-prefixed hex in any case
    1 <= r < n and 1 <= s <= n / 2 (EIP-2: the high-s twin is refused, not flipped)
    v in {27, 28} or {0, 1}, normalised to 27/28; anything else (EIP-155 values included:
    nothing here is a transaction) is refused

and replay protection keys on what was signed (the signer and the digest), not on the bytes.

Pure Python over eth-account: the executor side of orchestrator.automations.typed_data uses it
without Django."""

from __future__ import annotations

from dataclasses import dataclass

from eth_account import Account
from eth_account.messages import SignableMessage
from eth_utils import keccak

# The order of the secp256k1 group.
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SECP256K1_HALF_N = SECP256K1_N // 2
# The accepted v values and what each is normalised to.
ACCEPTED_V = {27: 27, 28: 28, 0: 27, 1: 28}
SIGNATURE_BYTES = 65


class MalformedSignature(ValueError):
    """A signature refused before recovery: its message says why, for the API's error body."""


@dataclass(frozen=True)
class CanonicalSignature:
    r: int
    s: int
    v: int  # 27 or 28

    def to_bytes(self) -> bytes:
        return self.r.to_bytes(32, "big") + self.s.to_bytes(32, "big") + bytes([self.v])

    def hex(self) -> str:
        """0x-prefixed lower-case hex, v as 27/28: the form the system stores."""
        return "0x" + self.to_bytes().hex()


@dataclass(frozen=True)
class Recovered:
    """Who signed what: the replay key of a signature."""

    signer: str  # checksummed address
    digest: str  # 0x-hex keccak of the EIP-191/EIP-712 encoding the signer signed
    signature: CanonicalSignature


def signature_parse(signature: object) -> CanonicalSignature:
    """The canonical form of a 0x-hex (or raw 65-byte) signature. Raises MalformedSignature."""
    if isinstance(signature, str):
        if not signature.startswith(("0x", "0X")):
            raise MalformedSignature("The signature must be 0x-prefixed hex.")
        try:
            raw = bytes.fromhex(signature[2:])
        except ValueError:
            raise MalformedSignature("The signature must be 0x-prefixed hex.") from None
    elif isinstance(signature, bytes):
        raw = signature
    else:
        raise MalformedSignature("The signature must be 0x-prefixed hex.")
    if len(raw) != SIGNATURE_BYTES:
        raise MalformedSignature(f"The signature must be {SIGNATURE_BYTES} bytes (r, s, v), not {len(raw)}.")
    r, s, v = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big"), raw[64]
    if not 1 <= r < SECP256K1_N:
        raise MalformedSignature("The signature's r is out of range.")
    if not 1 <= s <= SECP256K1_HALF_N:
        raise MalformedSignature(
            "The signature is not canonical: s must be in the lower half of the curve order (EIP-2)."
        )
    if v not in ACCEPTED_V:
        raise MalformedSignature(f"The signature's v must be 27 or 28 (or 0 or 1), not {v}.")
    return CanonicalSignature(r=r, s=s, v=ACCEPTED_V[v])


def signable_digest(signable: SignableMessage) -> str:
    """The hash a signature of `signable` covers (EIP-191; EIP-712 is version 0x01), 0x-hex."""
    return "0x" + keccak(b"\x19" + signable.version + signable.header + signable.body).hex()


def signature_recover(signable: SignableMessage, signature: object) -> Recovered:
    """Who signed `signable` with this signature, after signature_parse. Raises
    MalformedSignature, also when no key recovers from it (an r that is no point's x)."""
    canonical = signature_parse(signature)
    try:
        signer = Account.recover_message(signable, vrs=(canonical.v, canonical.r, canonical.s))
    except Exception:  # eth-keys raises assorted errors for an (r, s) no key produced
        raise MalformedSignature("The signature recovers no key.") from None
    return Recovered(signer=str(signer), digest=signable_digest(signable), signature=canonical)
