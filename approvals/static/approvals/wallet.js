// The browser wallet (EIP-1193, window.ethereum) for the admin's pages, and the "Your approver
// wallet" page's Connect button (templates/admin/approvals/wallet.html).
//
// window.VaultWallet = {available(), connect(), personalSign(address, message),
// signTypedData(address, typedData)}: each returns a promise; a failure rejects with an Error
// whose message is a sentence to show (no wallet, the user refused, ...) and whose `code` is the
// wallet's EIP-1193 code when it gave one. Other pages (approving a Safe transaction) use
// signTypedData, so keep this API.
(function () {
  "use strict";

  var NO_WALLET =
    "No browser wallet was found. Install or enable one (for example MetaMask or Rabby), then reload this page.";

  function provider() {
    var ethereum = window.ethereum;
    return ethereum && typeof ethereum.request === "function" ? ethereum : null;
  }

  // EIP-1193 and EIP-1474 codes, in words.
  function explained(error) {
    var code = error && typeof error.code === "number" ? error.code : null;
    var words = {
      4001: "You refused the request in your wallet.",
      4100: "Your wallet has not authorised this site: connect it first.",
      4200: "Your wallet does not support this request.",
      4900: "Your wallet is not connected to any chain.",
      4901: "Your wallet is not connected to this chain.",
      "-32002": "Your wallet already has a request waiting: open it and answer it there.",
    }[code];
    var message = words || "Your wallet refused: " + ((error && error.message) || String(error));
    var wrapped = new Error(message);
    wrapped.code = code;
    return wrapped;
  }

  function call(method, params) {
    var ethereum = provider();
    if (!ethereum) {
      return Promise.reject(new Error(NO_WALLET));
    }
    return Promise.resolve()
      .then(function () {
        return ethereum.request(params === undefined ? { method: method } : { method: method, params: params });
      })
      .catch(function (error) {
        throw explained(error);
      });
  }

  // personal_sign takes the message as 0x-hex of its UTF-8 bytes (wallets show it decoded).
  function utf8Hex(text) {
    var bytes = new TextEncoder().encode(text);
    var hex = "0x";
    for (var i = 0; i < bytes.length; i++) {
      hex += bytes[i].toString(16).padStart(2, "0");
    }
    return hex;
  }

  var VaultWallet = {
    available: function () {
      return provider() !== null;
    },
    // The first account the wallet shares, after asking the user.
    connect: function () {
      return call("eth_requestAccounts").then(function (accounts) {
        if (!Array.isArray(accounts) || accounts.length === 0) {
          throw new Error("Your wallet shared no account: unlock it and choose one.");
        }
        return accounts[0];
      });
    },
    personalSign: function (address, message) {
      return call("personal_sign", [utf8Hex(message), address]);
    },
    signTypedData: function (address, typedData) {
      return call("eth_signTypedData_v4", [address, JSON.stringify(typedData)]);
    },
  };
  window.VaultWallet = VaultWallet;

  // --- the "Your approver wallet" page ---------------------------------------------------

  function post(url, token, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": token },
      body: JSON.stringify(body),
    }).then(function (response) {
      return response
        .json()
        .catch(function () {
          return {};
        })
        .then(function (answer) {
          if (!response.ok) {
            var said = answer && answer.error && answer.error.message;
            throw new Error(said || "The server refused (HTTP " + response.status + ").");
          }
          return answer;
        });
    });
  }

  function wirePage() {
    var root = document.getElementById("wallet");
    var button = document.getElementById("connect-wallet");
    if (!root || !button) {
      return;
    }
    var status = document.getElementById("wallet-status");
    var token = root.querySelector("input[name=csrfmiddlewaretoken]").value;
    function say(text, failed) {
      status.textContent = text;
      status.className = failed ? "errornote" : "";
    }
    button.addEventListener("click", function () {
      if (!VaultWallet.available()) {
        say(NO_WALLET, true);
        return;
      }
      button.disabled = true;
      var address;
      var message;
      say("Waiting for your wallet to share an account…");
      VaultWallet.connect()
        .then(function (account) {
          address = account;
          return post(root.dataset.challengeUrl, token, { address: address });
        })
        .then(function (challenge) {
          message = challenge.message;
          say("Sign the message in your wallet to prove " + address + " is yours…");
          return VaultWallet.personalSign(address, message);
        })
        .then(function (signature) {
          return post(root.dataset.registerUrl, token, { message: message, signature: signature });
        })
        .then(function (wallet) {
          document.getElementById("wallet-address").textContent = wallet.address;
          document.getElementById("wallet-kind").textContent = "";
          say("Registered " + wallet.address + " as your approver wallet.");
        })
        .catch(function (error) {
          say(error.message, true);
        })
        .then(function () {
          button.disabled = false;
        });
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", wirePage);
  } else {
    wirePage();
  }
})();
