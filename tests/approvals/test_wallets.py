"""Approvers' wallets (approvals/wallets.py, docs/api.md "Wallets"): an EIP-4361 challenge, signed
once by the wallet it names, registers the wallet; everything else is refused with its code."""

from __future__ import annotations

import re
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.test import Client
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from rest_framework.test import APIClient

from approvals.models import ApproverWallet, WalletChallenge
from approvals.wallets import (
    CHALLENGE_TTL,
    InvalidChallenge,
    InvalidWalletSignature,
    NotADevelopmentChain,
    WalletSignatureMismatch,
    WalletTaken,
    dev_wallet_enable,
    dev_wallet_key,
    users_by_wallet,
    wallet_challenge_issue,
    wallet_of,
    wallet_register,
)
from orchestrator.infra.errors import DomainError
from relayer.keys import key_manager
from relayer.models import Chain, KeyPurpose, SigningKey
from tests.conftest import wait_until
from tests.factories import ChainFactory, TokenFactory, UserFactory
from tests.support.signatures import high_s_twin, with_v

pytestmark = pytest.mark.django_db

DOMAIN = "orchestrator.example:8000"
URI = "https://orchestrator.example:8000/"

# EIP-4361's ABNF, for the fields this server writes (no optional Not Before, Request ID, Resources).
SIWE = re.compile(
    r"\A(?P<domain>[^\s/]+) wants you to sign in with your Ethereum account:\n"
    r"(?P<address>0x[0-9a-fA-F]{40})\n"
    r"\n"
    r"(?P<statement>[^\n]+)\n"
    r"\n"
    r"URI: (?P<uri>\S+)\n"
    r"Version: 1\n"
    r"Chain ID: (?P<chain_id>[0-9]+)\n"
    r"Nonce: (?P<nonce>[A-Za-z0-9]{8,})\n"
    r"Issued At: (?P<issued>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)\n"
    r"Expiration Time: (?P<expires>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)\Z"
)


def sign(account: LocalAccount, message: str) -> str:
    return "0x" + account.sign_message(encode_defunct(text=message)).signature.hex().removeprefix("0x")


def issue(user: Any, address: str, chain_id: int = 31337) -> WalletChallenge:
    return wallet_challenge_issue(user=user, address=address, domain=DOMAIN, uri=URI, chain_id=chain_id)


@pytest.fixture
def user() -> Any:
    return UserFactory.create(username="approver1", staff=True)


@pytest.fixture
def account() -> LocalAccount:
    return Account.create()


# --- the challenge ------------------------------------------------------------------------------


def test_the_challenge_is_an_eip_4361_message_with_a_fresh_nonce_good_for_ten_minutes(
    user: Any, account: LocalAccount
) -> None:
    challenge = issue(user, account.address.lower(), chain_id=31337)
    fields = SIWE.match(challenge.message)
    assert fields is not None, challenge.message
    assert fields["domain"] == DOMAIN
    assert fields["address"] == account.address  # checksummed, whatever case was asked for
    assert fields["statement"] == "Register this wallet as approver1's approver wallet for Vault Orchestrator."
    assert fields["uri"] == URI
    assert fields["chain_id"] == "31337"
    assert fields["nonce"] == challenge.nonce and len(challenge.nonce) >= 8
    assert fields["issued"] == challenge.issued_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert fields["expires"] == challenge.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert challenge.expires_at - challenge.issued_at == CHALLENGE_TTL == timedelta(minutes=10)
    assert challenge.address == account.address and challenge.used_at is None
    assert issue(user, account.address).nonce != challenge.nonce


def test_a_challenge_for_something_that_is_no_address_is_refused(user: Any) -> None:
    with pytest.raises(DomainError) as refused:
        issue(user, "0x1234")
    assert (refused.value.code, refused.value.http_status) == ("invalid", 400)
    assert not WalletChallenge.objects.exists()


# --- registering --------------------------------------------------------------------------------


def test_the_wallet_that_signed_its_challenge_is_registered(user: Any, account: LocalAccount) -> None:
    challenge = issue(user, account.address)
    signature = sign(account, challenge.message)
    wallet = wallet_register(user=user, message=challenge.message, signature=signature)
    assert (wallet.address, wallet.message, wallet.development) == (account.address, challenge.message, False)
    assert wallet.signature == signature.lower()
    challenge.refresh_from_db()
    assert challenge.used_at is not None
    assert wallet_of(user) == account.address
    assert users_by_wallet([account.address.lower(), Account.create().address, "nonsense"]) == {
        account.address.lower(): user
    }


def test_v_written_0_or_1_registers_and_is_stored_as_27_or_28(user: Any, account: LocalAccount) -> None:
    challenge = issue(user, account.address)
    signature = sign(account, challenge.message)
    wallet = wallet_register(
        user=user, message=challenge.message, signature=with_v(signature, int(signature[-2:], 16) - 27)
    )
    assert wallet.signature == signature.lower()


def test_registering_again_replaces_the_wallet(user: Any, account: LocalAccount) -> None:
    first = issue(user, account.address)
    wallet_register(user=user, message=first.message, signature=sign(account, first.message))
    other = Account.create()
    second = issue(user, other.address)
    wallet_register(user=user, message=second.message, signature=sign(other, second.message))
    assert list(ApproverWallet.objects.values_list("user", "address")) == [(user.pk, other.address)]
    assert users_by_wallet([account.address]) == {}


def test_a_signature_by_another_key_is_a_mismatch(user: Any, account: LocalAccount) -> None:
    challenge = issue(user, account.address)
    with pytest.raises(WalletSignatureMismatch) as refused:
        wallet_register(user=user, message=challenge.message, signature=sign(Account.create(), challenge.message))
    assert (refused.value.code, refused.value.http_status) == ("wallet_signature_mismatch", 401)
    assert not ApproverWallet.objects.exists()
    challenge.refresh_from_db()
    assert challenge.used_at is None  # nothing happened: the right wallet may still sign it


def test_the_high_s_twin_is_refused_by_the_one_parser(user: Any, account: LocalAccount) -> None:
    challenge = issue(user, account.address)
    with pytest.raises(InvalidWalletSignature) as refused:
        wallet_register(user=user, message=challenge.message, signature=high_s_twin(sign(account, challenge.message)))
    assert (refused.value.code, refused.value.http_status) == ("invalid_signature", 401)
    assert "EIP-2" in refused.value.message
    assert not ApproverWallet.objects.exists()


def test_a_challenge_registers_once(user: Any, account: LocalAccount) -> None:
    challenge = issue(user, account.address)
    signature = sign(account, challenge.message)
    wallet_register(user=user, message=challenge.message, signature=signature)
    with pytest.raises(InvalidChallenge, match="used already") as refused:
        wallet_register(user=user, message=challenge.message, signature=signature)
    assert (refused.value.code, refused.value.http_status) == ("invalid_challenge", 401)


@pytest.mark.django_db(transaction=True)
def test_two_registrations_of_one_challenge_wait_for_its_row_lock_and_one_wins(
    user: Any, account: LocalAccount
) -> None:
    challenge = issue(user, account.address)
    signature = sign(account, challenge.message)
    outcome: dict[str, str] = {}

    def second() -> None:
        try:
            wallet_register(user=user, message=challenge.message, signature=signature)
            outcome["second"] = "registered"
        except InvalidChallenge as exc:
            outcome["second"] = exc.message
        finally:
            connection.close()

    thread = threading.Thread(target=second)
    with transaction.atomic():
        wallet_register(user=user, message=challenge.message, signature=signature)
        thread.start()
        # The second registration waits for the challenge's row lock, held until this commits.
        wait_until(lambda: waiting_for_a_lock() == 1, timeout=10, message="the second registration to wait")
    thread.join(timeout=10)
    assert "used already" in outcome["second"]
    assert ApproverWallet.objects.get(user=user).address == account.address


def waiting_for_a_lock() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return int(cursor.fetchone()[0])


def test_an_expired_challenge_is_refused(user: Any, account: LocalAccount) -> None:
    challenge = issue(user, account.address)
    WalletChallenge.objects.filter(pk=challenge.pk).update(expires_at=challenge.issued_at - timedelta(seconds=1))
    with pytest.raises(InvalidChallenge, match="expired"):
        wallet_register(user=user, message=challenge.message, signature=sign(account, challenge.message))
    assert not ApproverWallet.objects.exists()


def test_another_users_challenge_is_refused(user: Any, account: LocalAccount) -> None:
    challenge = issue(UserFactory.create(), account.address)
    with pytest.raises(InvalidChallenge, match="not issued to you"):
        wallet_register(user=user, message=challenge.message, signature=sign(account, challenge.message))


def test_a_message_not_byte_for_byte_the_one_issued_is_refused(user: Any, account: LocalAccount) -> None:
    challenge = issue(user, account.address)
    for message in (challenge.message.replace("\n", "\r\n"), challenge.message + "\n", "hello"):
        with pytest.raises(InvalidChallenge, match="not issued to you"):
            wallet_register(user=user, message=message, signature=sign(account, message))
    assert not ApproverWallet.objects.exists()


def test_an_address_another_user_registered_is_taken(user: Any, account: LocalAccount) -> None:
    owner = UserFactory.create()
    first = issue(owner, account.address)
    wallet_register(user=owner, message=first.message, signature=sign(account, first.message))
    challenge = issue(user, account.address)
    with pytest.raises(WalletTaken) as refused:
        wallet_register(user=user, message=challenge.message, signature=sign(account, challenge.message))
    assert (refused.value.code, refused.value.http_status) == ("wallet_taken", 409)
    assert wallet_of(user) is None and wallet_of(owner) == account.address
    challenge.refresh_from_db()
    assert challenge.used_at is None


# --- development wallets ------------------------------------------------------------------------


def test_a_development_wallet_is_a_server_key_that_signed_its_own_challenge(user: Any) -> None:
    chain = ChainFactory.create()  # 31337: always a development chain
    wallet = dev_wallet_enable(user=user, chain=chain)
    key = dev_wallet_key(user)
    assert key is not None and key.address == wallet.address and key.purpose == KeyPurpose.APPROVER
    assert key.label == "development wallet of approver1"
    assert wallet.development is True
    assert SIWE.match(wallet.message) is not None
    signer = Account.recover_message(encode_defunct(text=wallet.message), signature=wallet.signature)
    assert signer == wallet.address
    assert WalletChallenge.objects.get(user=user).used_at is not None
    # Again: the same wallet, no second key.
    assert dev_wallet_enable(user=user, chain=chain).address == wallet.address
    assert SigningKey.objects.filter(purpose=KeyPurpose.APPROVER).count() == 1
    # The key signs typed data for the other flows through the key manager.
    signature = key_manager().sign_message(key=key, text="hello")
    assert Account.recover_message(encode_defunct(text="hello"), signature=signature) == wallet.address


def test_a_development_wallet_is_refused_on_a_chain_that_is_not_one(user: Any) -> None:
    chain = Chain.objects.create(chain_id=1, name="mainnet", rpc_url="http://127.0.0.1:9")
    with pytest.raises(NotADevelopmentChain) as refused:
        dev_wallet_enable(user=user, chain=chain)
    assert (refused.value.code, refused.value.http_status) == ("not_a_development_chain", 409)
    assert not SigningKey.objects.filter(purpose=KeyPurpose.APPROVER).exists()
    assert dev_wallet_key(user) is None and wallet_of(user) is None


def test_a_wallet_the_user_holds_has_no_server_key(user: Any, account: LocalAccount) -> None:
    dev_wallet_enable(user=user, chain=ChainFactory.create())
    challenge = issue(user, account.address)
    wallet_register(user=user, message=challenge.message, signature=sign(account, challenge.message))
    assert dev_wallet_key(user) is None
    assert ApproverWallet.objects.get(user=user).development is False


# --- REST ---------------------------------------------------------------------------------------


@pytest.fixture
def api(user: Any) -> APIClient:
    token = TokenFactory.create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def error_code(response: Any, status: int) -> str:
    assert response.status_code == status, response.content[:500]
    body = response.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    return str(body["error"]["code"])


def test_rest_challenge_register_and_read_back(api: APIClient, account: LocalAccount) -> None:
    ChainFactory.create()
    assert error_code(api.get("/v1/wallets/me"), 404) == "not_found"
    answer = api.post("/v1/wallets/challenge", {"address": account.address.lower()}, format="json")
    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert set(body) == {"message", "nonce", "expiresAt"}
    fields = SIWE.match(body["message"])
    assert fields is not None
    assert (fields["domain"], fields["uri"], fields["chain_id"]) == ("testserver", "http://testserver/", "31337")
    assert fields["nonce"] == body["nonce"]

    registered = api.post(
        "/v1/wallets", {"message": body["message"], "signature": sign(account, body["message"])}, format="json"
    )
    assert registered.status_code == 201, registered.content
    assert registered.json()["address"] == account.address
    assert registered.json()["development"] is False
    me = api.get("/v1/wallets/me")
    assert me.status_code == 200 and me.json() == registered.json()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "address"),
        ({"address": "0x1234"}, "address"),
        ({"address": 0}, "address"),
        ({"address": "0x" + "ab" * 20, "chainId": 5}, "chainId"),
        ({"address": "0x" + "ab" * 20, "chainId": "31337"}, "chainId"),
        ({"address": "0x" + "ab" * 20, "chainId": 2**64}, "chainId"),
    ],
)
def test_rest_a_bad_challenge_request_is_400_invalid(api: APIClient, body: dict[str, Any], field: str) -> None:
    ChainFactory.create()
    response = api.post("/v1/wallets/challenge", body, format="json")
    assert error_code(response, 400) == "invalid"
    assert field in response.json()["error"]["fields"]
    assert not WalletChallenge.objects.exists()


def test_rest_refusals_have_their_codes(api: APIClient, user: Any, account: LocalAccount) -> None:
    ChainFactory.create()
    message = api.post("/v1/wallets/challenge", {"address": account.address}, format="json").json()["message"]
    signature = sign(account, message)
    cases = [
        ({"message": message, "signature": sign(Account.create(), message)}, 401, "wallet_signature_mismatch"),
        ({"message": message, "signature": high_s_twin(signature)}, 401, "invalid_signature"),
        ({"message": message, "signature": "0x12"}, 401, "invalid_signature"),
        ({"message": message.replace("approver1", "approver2"), "signature": signature}, 401, "invalid_challenge"),
        ({"message": message, "signature": 12}, 400, "invalid"),
        ({"message": ["x"], "signature": signature}, 400, "invalid"),
        ({"signature": signature}, 400, "invalid"),
    ]
    for body, status, code in cases:
        assert error_code(api.post("/v1/wallets", body, format="json"), status) == code, body
    assert not ApproverWallet.objects.exists()
    assert api.post("/v1/wallets", {"message": message, "signature": signature}, format="json").status_code == 201
    again = api.post("/v1/wallets", {"message": message, "signature": signature}, format="json")
    assert error_code(again, 401) == "invalid_challenge"

    # The same address, proven by another user: taken.
    other = TokenFactory.create()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {other.key}")
    theirs = client.post("/v1/wallets/challenge", {"address": account.address}, format="json").json()["message"]
    taken = client.post("/v1/wallets", {"message": theirs, "signature": sign(account, theirs)}, format="json")
    assert error_code(taken, 409) == "wallet_taken"
    assert error_code(client.get("/v1/wallets/me"), 404) == "not_found"


def test_rest_needs_a_token() -> None:
    client = APIClient()
    assert error_code(client.get("/v1/wallets/me"), 401) == "not_authenticated"
    assert error_code(client.post("/v1/wallets/challenge", {}, format="json"), 401) == "not_authenticated"


def test_rest_bodies_the_database_cannot_keep_or_that_are_not_objects_are_400(api: APIClient) -> None:
    ChainFactory.create()
    for raw in ('{"message": "a\\u0000b", "signature": "0x00"}', "[]", '{"message": "' + "x" * 2001 + '"}'):
        response = api.post("/v1/wallets", raw, content_type="application/json")
        assert error_code(response, 400) in {"invalid", "malformed_json"}, raw
    response = api.post("/v1/wallets/challenge", "not json", content_type="application/json")
    assert error_code(response, 400) == "malformed_json"
    assert not WalletChallenge.objects.exists()


# --- the admin's endpoints ----------------------------------------------------------------------

WALLET_PAGE = "/admin/approvals/approverwallet/"


@pytest.fixture
def browser_session(user: Any) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def csrf_token(client: Client) -> str:
    page = client.get(WALLET_PAGE)
    assert page.status_code == 200
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())
    assert found is not None
    return found.group(1)


def test_the_admin_page_registers_with_the_session_and_the_csrf_token(
    browser_session: Client, user: Any, account: LocalAccount
) -> None:
    ChainFactory.create()
    page = browser_session.get(WALLET_PAGE)
    assert b"Your approver wallet" in page.content and b"Use a development wallet" in page.content
    without = browser_session.post(
        f"{WALLET_PAGE}challenge/", {"address": account.address}, content_type="application/json"
    )
    assert without.status_code == 403  # no CSRF token
    token = csrf_token(browser_session)
    challenge = browser_session.post(
        f"{WALLET_PAGE}challenge/",
        {"address": account.address},
        content_type="application/json",
        HTTP_X_CSRFTOKEN=token,
    )
    assert challenge.status_code == 201, challenge.content
    message = challenge.json()["message"]
    refused = browser_session.post(
        f"{WALLET_PAGE}register/",
        {"message": message, "signature": sign(Account.create(), message)},
        content_type="application/json",
        HTTP_X_CSRFTOKEN=token,
    )
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "wallet_signature_mismatch"
    for raw in ("not json", "[]", '{"message": 1, "signature": "0x"}'):
        bad = browser_session.post(
            f"{WALLET_PAGE}register/", raw, content_type="application/json", HTTP_X_CSRFTOKEN=token
        )
        assert bad.status_code == 400 and bad.json()["error"]["code"] in {"invalid", "malformed_json"}, raw
    registered = browser_session.post(
        f"{WALLET_PAGE}register/",
        {"message": message, "signature": sign(account, message)},
        content_type="application/json",
        HTTP_X_CSRFTOKEN=token,
    )
    assert registered.status_code == 201 and registered.json()["address"] == account.address
    assert account.address.encode() in browser_session.get(WALLET_PAGE).content
    assert browser_session.get(f"{WALLET_PAGE}register/").status_code == 405


def test_the_admin_pages_are_for_staff_and_have_no_object_pages(user: Any) -> None:
    outsider = Client()
    outsider.force_login(UserFactory.create())  # not staff
    assert outsider.get(WALLET_PAGE).status_code == 302  # to the login page
    staff = Client()
    staff.force_login(user)
    assert staff.get(f"{WALLET_PAGE}1/change/").status_code == 404
    assert staff.get(f"{WALLET_PAGE}add/").status_code == 404


def test_the_admin_offers_a_development_wallet_on_a_development_chain_only(
    browser_session: Client, user: Any, settings: Any
) -> None:
    ChainFactory.create()
    token = csrf_token(browser_session)
    answer = browser_session.post(f"{WALLET_PAGE}development/", {"csrfmiddlewaretoken": token}, follow=True)
    assert b"a development wallet" in answer.content
    assert ApproverWallet.objects.get(user=user).development is True

    Chain.objects.create(chain_id=1, name="mainnet", rpc_url="http://127.0.0.1:9")
    settings.CHAIN_ID = 1
    assert b"Use a development wallet" not in browser_session.get(WALLET_PAGE).content
    other = UserFactory.create(staff=True)
    browser_session.force_login(other)
    token = csrf_token(browser_session)
    answer = browser_session.post(f"{WALLET_PAGE}development/", {"csrfmiddlewaretoken": token}, follow=True)
    assert b"is not a development chain" in answer.content
    assert wallet_of(other) is None
