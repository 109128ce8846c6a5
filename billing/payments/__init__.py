"""Card payments through Stripe (PaymentIntents). `gateway` is the only module that talks
to Stripe's API; `services` turns signed webhook events into ledger rows; `webhook` is
the HTTP endpoint (/webhooks/stripe)."""
