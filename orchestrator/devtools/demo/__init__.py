"""The make-run demo: accounts, vaults, approvers, an automation and the demo oracle."""
