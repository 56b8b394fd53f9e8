-- ACME: the account per directory, and the certificates obtained,
-- shared by every orchestrator on this database and kept across restarts.
CREATE TABLE acme_accounts (
    directory   text PRIMARY KEY,
    -- instant-acme's AccountCredentials as JSON (holds the account's private key)
    credentials text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE certificates (
    directory  text NOT NULL,
    host       text NOT NULL,
    chain_pem  text NOT NULL,
    key_pem    text NOT NULL,
    not_after  timestamptz NOT NULL,
    issued_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (directory, host)
);
