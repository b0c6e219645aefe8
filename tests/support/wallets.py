"""A browser wallet for Playwright tests: an EIP-1193 provider (window.ethereum) injected before
any page script runs, whose signatures are made in Python by eth-account with a test key.

    address = install_test_wallet(page, private_key_hex)

It answers eth_requestAccounts / eth_accounts with the key's address and eth_chainId with
`chain_id`; personal_sign (params [message as 0x-hex of its bytes, or plain text, address]) and
eth_signTypedData_v4 (params [address, typed data as JSON text]) are signed by the key, and a
request for another address is refused like a wallet would (4100). `refuse=True` plays a user
who refuses every request (4001)."""

from __future__ import annotations

import json
import re
from typing import Any

from eth_account import Account
from eth_account.messages import SignableMessage, encode_defunct, encode_typed_data
from playwright.sync_api import Page

SIGN_FUNCTION = "__vaultTestWalletSign"

_PROVIDER = """
(() => {
  const config = %(config)s;
  const rpcError = (code, message) => Object.assign(new Error(message), { code });
  window.ethereum = {
    isVaultTestWallet: true,
    async request({ method, params }) {
      if (config.refuse) throw rpcError(4001, "User rejected the request.");
      switch (method) {
        case "eth_requestAccounts":
        case "eth_accounts":
          return [config.address];
        case "eth_chainId":
          return config.chainId;
        case "personal_sign":
        case "eth_signTypedData_v4":
          try {
            return await window[config.sign](method, JSON.stringify(params || []));
          } catch (error) {
            throw rpcError(4100, String((error && error.message) || error));
          }
        default:
          throw rpcError(4200, `The test wallet does not support ${method}.`);
      }
    },
    on() {},
    removeListener() {},
  };
})();
"""


def _personal_message(message: str) -> SignableMessage:
    # Wallets take the message as 0x-hex of its bytes, or as the text itself.
    if re.fullmatch(r"0x([0-9a-fA-F]{2})*", message):
        return encode_defunct(primitive=bytes.fromhex(message[2:]))
    return encode_defunct(text=message)


def install_test_wallet(page: Page, private_key_hex: str, *, chain_id: int = 31337, refuse: bool = False) -> str:
    """Injects the provider into every document `page` loads from now on; returns its address.
    Call once per page (the signing function is exposed under one name)."""
    account = Account.from_key(private_key_hex)

    def sign(method: str, params_json: str) -> str:
        params: list[Any] = json.loads(params_json)
        if method == "personal_sign":
            message, address = params[0], params[1]
            signable = _personal_message(message)
        else:
            address, typed = params[0], params[1]
            signable = encode_typed_data(full_message=json.loads(typed) if isinstance(typed, str) else typed)
        if str(address).lower() != account.address.lower():
            raise ValueError(f"the test wallet holds {account.address}, not {address}")
        return "0x" + account.sign_message(signable).signature.hex().removeprefix("0x")

    page.expose_function(SIGN_FUNCTION, sign)
    config = {"address": account.address, "chainId": hex(chain_id), "refuse": refuse, "sign": SIGN_FUNCTION}
    page.add_init_script(_PROVIDER % {"config": json.dumps(config)})
    return str(account.address)
