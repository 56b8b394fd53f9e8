-- A host belongs to one waifu once a claimed waifu holds it; wrong secrets
-- are counted per name and source address.

-- A refused bind is reported once in a while, not on every repeated hello:
-- the check looks for the same incident of the same waifu not long ago.
CREATE INDEX incidents_by_name ON incidents (name, time DESC);

-- The throttle, per name and source address. The row with source '' is the
-- name's total over every source: the ceiling on guessing from many
-- addresses. Rows only bound attempts: losing them loses no data.
DROP TABLE throttle;
CREATE TABLE attempts (
    name         text NOT NULL,
    -- the client address, or '' for the name over every address
    source       text NOT NULL,
    failures     integer NOT NULL DEFAULT 0,
    window_start timestamptz NOT NULL DEFAULT now(),
    last_failure timestamptz NOT NULL DEFAULT now(),
    -- length of the last lockout in milliseconds; 0 before the first
    last_lock_ms bigint NOT NULL DEFAULT 0,
    locked_until timestamptz,
    -- attempts let through to Argon2 and not judged yet, reserved in the
    -- transaction that checked the lock, so many at once cannot all pass;
    -- void once pending_at is older than a few seconds (a crashed check)
    pending      integer NOT NULL DEFAULT 0,
    pending_at   timestamptz,
    -- when this address last showed the right secret: such an address is
    -- not held back by the name's ceiling, only by its own count
    trusted_at   timestamptz,
    PRIMARY KEY (name, source)
);

-- When a bind was first granted: on a host that several waifus share, a
-- claimed waifu that held it first keeps it alone. Binds made before this
-- column take their waifu's registration time.
ALTER TABLE binds ADD COLUMN since timestamptz NOT NULL DEFAULT now();
UPDATE binds b SET since = w.registered_at FROM waifus w WHERE w.name = b.name;

-- Binds that trespass on the host of a claimed waifu that held it earlier
-- are released now, each one audit row, so no path on a claimed waifu's
-- host stays served by another waifu after this upgrade.
WITH trespassing AS (
    DELETE FROM binds b
    WHERE EXISTS (
        SELECT 1 FROM binds o JOIN waifu_secrets s ON s.name = o.name
        WHERE o.host = b.host AND o.name <> b.name AND o.since < b.since)
    RETURNING b.name, b.bind, b.host)
INSERT INTO audit (action, name, source, detail)
SELECT 'bind_released', name, 'orchestrator',
       'bind ' || bind || ' released: the host ' || host ||
       ' belongs to a claimed waifu that held it first'
FROM trespassing;
