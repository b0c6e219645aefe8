"""Other encodings of one signature, as an attacker would write them: the high-s twin (which
verifies as well), and v written 0/1 or EIP-155 style (docs/api.md, "Signatures")."""

from __future__ import annotations

from orchestrator.infra.signatures import SECP256K1_N


def _parts(signature: str) -> tuple[bytes, int, int]:
    raw = bytes.fromhex(signature.removeprefix("0x"))
    assert len(raw) == 65
    return raw[:32], int.from_bytes(raw[32:64], "big"), raw[64]


def high_s_twin(signature: str) -> str:
    """(r, n - s) with the parity of v flipped: recovers the same signer for the same digest."""
    r, s, v = _parts(signature)
    flipped = {27: 28, 28: 27, 0: 1, 1: 0}[v]
    return "0x" + (r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([flipped])).hex()


def with_v(signature: str, v: int) -> str:
    """The same r and s with v written as `v` (0/1, 27/28, 35+...; same parity is the caller's job)."""
    r, s, _ = _parts(signature)
    return "0x" + (r + s.to_bytes(32, "big") + bytes([v])).hex()


def recovery_bit(signature: str) -> int:
    """0 or 1: which of the two candidate keys v picks."""
    return (_parts(signature)[2] - 27) % 2
