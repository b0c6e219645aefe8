"""The one signature parser (orchestrator.infra.signatures): 65 bytes, r and s in range, low s
(EIP-2), v 27/28 or 0/1 normalised to 27/28; everything else is refused, with a reason."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data

from orchestrator.infra.signatures import (
    SECP256K1_HALF_N,
    SECP256K1_N,
    MalformedSignature,
    signable_digest,
    signature_parse,
    signature_recover,
)
from tests.support.signatures import high_s_twin, recovery_bit, with_v

ACCOUNT = Account.create()
SIGNABLE = encode_typed_data(
    domain_data={"name": "Test", "version": "1"},
    message_types={"Ping": [{"name": "text", "type": "string"}]},
    message_data={"text": "hello"},
)
SIGNATURE = "0x" + ACCOUNT.sign_message(SIGNABLE).signature.hex().removeprefix("0x")


def test_a_signature_as_eth_account_makes_it_is_canonical_and_recovers_its_signer() -> None:
    parsed = signature_parse(SIGNATURE)
    assert parsed.v in (27, 28) and parsed.s <= SECP256K1_HALF_N
    assert parsed.hex() == SIGNATURE.lower()
    recovered = signature_recover(SIGNABLE, SIGNATURE)
    assert recovered.signer == ACCOUNT.address
    assert recovered.digest == signable_digest(SIGNABLE) and len(recovered.digest) == 66
    assert signature_recover(SIGNABLE, SIGNATURE.upper().replace("0X", "0x")).signer == ACCOUNT.address
    assert signature_recover(SIGNABLE, bytes.fromhex(SIGNATURE[2:])).signer == ACCOUNT.address


def test_the_high_s_twin_verifies_with_eth_account_but_is_refused_here() -> None:
    twin = high_s_twin(SIGNATURE)
    assert Account.recover_message(SIGNABLE, signature=twin) == ACCOUNT.address  # why it matters
    with pytest.raises(MalformedSignature, match="lower half"):
        signature_parse(twin)
    with pytest.raises(MalformedSignature):
        signature_recover(SIGNABLE, twin)


def test_v_written_0_or_1_is_accepted_and_normalised_to_27_or_28() -> None:
    bit = recovery_bit(SIGNATURE)
    short_v = with_v(SIGNATURE, bit)
    assert signature_parse(short_v).v == 27 + bit
    assert signature_parse(short_v).hex() == SIGNATURE.lower()
    recovered = signature_recover(SIGNABLE, short_v)
    assert recovered.signer == ACCOUNT.address and recovered.digest == signable_digest(SIGNABLE)


@pytest.mark.parametrize("v", [35, 36, 37, 38, 2, 26, 29, 255])
def test_any_other_v_is_refused_eip_155_values_included(v: int) -> None:
    with pytest.raises(MalformedSignature, match=f"not {v}"):
        signature_parse(with_v(SIGNATURE, v))


def test_eip_155_v_of_the_right_parity_recovers_with_eth_account_but_is_refused_here() -> None:
    eip155 = with_v(SIGNATURE, 37 + recovery_bit(SIGNATURE))  # chain 1
    assert Account.recover_message(SIGNABLE, signature=eip155) == ACCOUNT.address
    with pytest.raises(MalformedSignature):
        signature_recover(SIGNABLE, eip155)


@pytest.mark.parametrize(
    "signature",
    [
        SIGNATURE[:-2],  # 64 bytes
        SIGNATURE + "00",  # 66 bytes
        "0x",
        SIGNATURE[2:],  # no 0x
        SIGNATURE[:-1] + "g",  # not hex
        SIGNATURE[:-1],  # odd length
        None,
        65,
    ],
)
def test_a_wrong_length_or_shape_is_refused(signature: object) -> None:
    with pytest.raises(MalformedSignature):
        signature_parse(signature)


@pytest.mark.parametrize(
    ("r", "s"),
    [(0, 1), (SECP256K1_N, 1), (1, 0), (1, SECP256K1_N), (1, SECP256K1_HALF_N + 1)],
)
def test_r_and_s_out_of_range_are_refused(r: int, s: int) -> None:
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([27])
    with pytest.raises(MalformedSignature):
        signature_parse("0x" + raw.hex())


def test_s_at_exactly_half_the_order_is_canonical() -> None:
    raw = (1).to_bytes(32, "big") + SECP256K1_HALF_N.to_bytes(32, "big") + bytes([28])
    assert signature_parse(raw).s == SECP256K1_HALF_N


def test_a_canonical_signature_that_recovers_no_key_is_refused() -> None:
    # r = 5 is not the x coordinate of any curve point.
    raw = (5).to_bytes(32, "big") + (1).to_bytes(32, "big") + bytes([27])
    with pytest.raises(MalformedSignature, match="recovers no key"):
        signature_recover(encode_defunct(text="x"), raw)
