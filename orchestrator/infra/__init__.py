"""Infrastructure every app uses: errors, idempotency, logging, configuration, database pools, the broker."""
