-- Idempotency keys (Idempotency-Key on the POSTs that create): one row per tenant and key, a
-- claim until its request is answered, then the answer its retries get. Rows expire
-- (`expires_at`); the claim that finds expired rows deletes them through the index.

CREATE TABLE idempotency_keys (
    tenant_id    TEXT NOT NULL,
    key          TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    claim_id     TEXT NOT NULL,
    claimed_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    status       INTEGER,
    content_type TEXT,
    body         BLOB,
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
