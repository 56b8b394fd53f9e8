-- TLS session ticket keys, shared by every orchestrator so that a client
-- resumes its session on any of them: the newest encrypts, every kept one
-- decrypts. Written only by the orchestrators' own rotation.
CREATE TABLE IF NOT EXISTS tls_ticket_keys (
    id         serial PRIMARY KEY,
    key        bytea NOT NULL CHECK (length(key) = 32),
    created_at timestamptz NOT NULL DEFAULT now()
);
