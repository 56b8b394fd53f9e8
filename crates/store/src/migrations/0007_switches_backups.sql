-- A waifu's switch, its backups, and who is alive to answer for it.

-- Paused (new requests wait) or in maintenance (503 at once); no row: open.
-- Set by an operator, or by a restore for the time of its swap.
CREATE SEQUENCE switch_generation;
CREATE TABLE switches (
    name          text PRIMARY KEY,
    mode          text NOT NULL CHECK (mode IN ('paused', 'maintenance')),
    message       text,
    retry_after_s integer NOT NULL DEFAULT 5,
    max_wait_ms   bigint NOT NULL DEFAULT 30000,
    -- a new value on every change, for the acknowledgements below
    generation    bigint NOT NULL,
    set_at        timestamptz NOT NULL DEFAULT now(),
    set_by        text NOT NULL
);

-- An orchestrator that holds a paused waifu's new requests and has none in
-- flight to it says so here, for the generation it saw.
CREATE TABLE switch_acks (
    name       text NOT NULL,
    origin     text NOT NULL,
    generation bigint NOT NULL,
    at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, origin)
);

-- Every running orchestrator writes its row every few seconds: who must
-- acknowledge a pause.
CREATE TABLE orchestrators (
    origin  text PRIMARY KEY,
    seen_at timestamptz NOT NULL
);

-- Backups taken by the scheduler and their checks.
CREATE TABLE backups (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL,
    file        text NOT NULL,
    size        bigint,
    taken_at    timestamptz NOT NULL DEFAULT now(),
    -- rows and checksums per table, of the snapshot the dump is of
    figures     jsonb,
    verified_at timestamptz,
    outcome     text NOT NULL CHECK (outcome IN ('taking', 'verified', 'unverified', 'failed')),
    detail      text
);
CREATE INDEX backups_by_name ON backups (name, taken_at DESC);
