-- Waifus, their instances and their binds: routing state lives in PostgreSQL.
CREATE TABLE waifus (
    name          text PRIMARY KEY,
    registered_at timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE instances (
    name          text NOT NULL REFERENCES waifus (name) ON DELETE CASCADE,
    -- canonical upstream, e.g. http://link:8080
    host          text NOT NULL,
    -- last known health, so a restarted orchestrator routes at once
    healthy       boolean NOT NULL DEFAULT false,
    registered_at timestamptz NOT NULL DEFAULT now(),
    last_hello    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, host)
);

-- One owner per (host, prefix): the primary key is what makes a bind "taken".
CREATE TABLE binds (
    host   text NOT NULL,
    prefix text NOT NULL,
    -- canonical bind key as accepted, e.g. https://link.waifu/p
    bind   text NOT NULL,
    target text NOT NULL,
    name   text NOT NULL REFERENCES waifus (name) ON DELETE CASCADE,
    PRIMARY KEY (host, prefix)
);
CREATE INDEX binds_by_name ON binds (name);
