-- Name ownership, a throttle every orchestrator shares, an outbox for
-- incident webhooks, and the audit log.

-- One secret per waifu name, claimed by the first hello or database call that
-- carries one: an Argon2id PHC string, never the secret.
CREATE TABLE waifu_secrets (
    name        text PRIMARY KEY,
    secret_hash text NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO waifu_secrets (name, secret_hash, claimed_at)
    SELECT name, secret_hash, created_at FROM databases;
-- waifu_secrets is the record from now on; the old column is no longer read.
ALTER TABLE databases ALTER COLUMN secret_hash DROP NOT NULL;

-- Wrong or missing secrets per name, shared by every orchestrator.
CREATE TABLE throttle (
    name         text PRIMARY KEY,
    failures     integer NOT NULL,
    window_start timestamptz NOT NULL,
    last_failure timestamptz NOT NULL,
    -- length of the last lockout in milliseconds; 0 before the first
    last_lock_ms bigint NOT NULL,
    locked_until timestamptz
);

-- Incidents still to deliver to INCIDENT_WEBHOOK_URL (at least once).
ALTER TABLE incidents ADD COLUMN delivered_at timestamptz;
ALTER TABLE incidents ADD COLUMN given_up_at timestamptz;
CREATE TABLE webhook_outbox (
    incident_id  bigint PRIMARY KEY REFERENCES incidents (id) ON DELETE CASCADE,
    attempts     integer NOT NULL DEFAULT 0,
    next_attempt timestamptz NOT NULL DEFAULT now(),
    last_error   text
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt);

-- Every change of routing or data state, appended, never updated.
CREATE TABLE audit (
    id     bigserial PRIMARY KEY,
    time   timestamptz NOT NULL DEFAULT now(),
    action text NOT NULL,
    name   text NOT NULL,
    source text NOT NULL,
    detail text NOT NULL
);
CREATE INDEX audit_by_name ON audit (name, id DESC);
CREATE INDEX audit_by_time ON audit (time);
-- Rows are never changed once written: an UPDATE is an error, whoever runs it.
-- (Only the retention pruner deletes, and only rows older than AUDIT_RETENTION.)
CREATE FUNCTION audit_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit rows are append-only';
END $$;
CREATE TRIGGER audit_append_only BEFORE UPDATE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_is_append_only();
