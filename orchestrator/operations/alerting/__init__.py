"""Alerts (docs/operations.md, "Alerts"): `rules` says which conditions hold, `evaluation` turns
them into firing and resolved alerts and their deliveries, `delivery` sends one delivery."""
