-- Waifu databases: one role and one database per waifu.
CREATE TABLE databases (
    name           text PRIMARY KEY,
    -- Argon2id PHC string of the waifu's secret; the secret itself is never stored
    secret_hash    text NOT NULL,
    -- SCRAM-SHA-256 verifier the role's password is set to (not the password)
    scram_verifier text NOT NULL,
    -- fingerprint of the key the password was derived under
    key_id         text NOT NULL,
    state          text NOT NULL CHECK (state IN ('provisioning', 'ready')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    ready_at       timestamptz
);

-- Security-relevant events, newest first via the index.
CREATE TABLE incidents (
    id     bigserial PRIMARY KEY,
    time   timestamptz NOT NULL,
    kind   text NOT NULL,
    name   text NOT NULL,
    source text NOT NULL,
    detail text NOT NULL
);
CREATE INDEX incidents_by_time ON incidents (time DESC, id DESC);
