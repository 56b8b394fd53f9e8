-- Pending ACME challenge answers, so that whichever orchestrator the CA's
-- validation reaches can answer it: HTTP-01 key authorizations by token,
-- TLS-ALPN-01 certificates (DER, with their key) by host.
CREATE TABLE IF NOT EXISTS acme_challenges (
    kind   text NOT NULL CHECK (kind IN ('http-01', 'tls-alpn-01')),
    name   text NOT NULL,
    value  bytea NOT NULL,
    key    bytea,
    set_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name)
);
