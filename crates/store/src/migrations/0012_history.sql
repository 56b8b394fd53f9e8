-- Health history: every change of an instance's state (added, healthy,
-- unhealthy, draining, removed) and of a waifu's switch (open, paused,
-- maintenance), one row each, written by the orchestrator that decided it.
-- Kept for HISTORY_RETENTION; it outlives the waifu it is about.
CREATE TABLE IF NOT EXISTS health_history (
    id         bigserial PRIMARY KEY,
    time       timestamptz NOT NULL DEFAULT now(),
    name       text NOT NULL,
    -- NULL: a row about the waifu's switch
    instance   text,
    -- NULL: nothing known before (a new instance)
    from_state text,
    to_state   text NOT NULL,
    reason     text NOT NULL,
    -- the orchestrator that wrote it
    origin     text NOT NULL
);
CREATE INDEX IF NOT EXISTS health_history_by_name ON health_history (name, instance, time);
CREATE INDEX IF NOT EXISTS health_history_by_time ON health_history (time);

-- Where history starts for what is registered already.
INSERT INTO health_history (name, instance, from_state, to_state, reason, origin)
SELECT name, host, NULL, CASE WHEN goodbye_at IS NOT NULL THEN 'draining'
                              WHEN healthy THEN 'healthy' ELSE 'unhealthy' END,
       'the history starts', 'migration'
FROM instances i
WHERE NOT EXISTS (SELECT 1 FROM health_history h WHERE h.name = i.name AND h.instance = i.host);
INSERT INTO health_history (name, instance, from_state, to_state, reason, origin)
SELECT name, NULL, 'open', mode, 'the history starts', 'migration' FROM switches s
WHERE NOT EXISTS (SELECT 1 FROM health_history h WHERE h.name = s.name AND h.instance IS NULL);

-- What the notifications of a waifu's state last said, so that a new
-- health leader neither repeats one nor misses one.
CREATE TABLE IF NOT EXISTS waifu_alerts (
    name       text PRIMARY KEY,
    state      text NOT NULL CHECK (state IN ('up', 'down')),
    flapping   boolean NOT NULL DEFAULT false,
    changed_at timestamptz NOT NULL DEFAULT now()
);

-- The binds the latest hello of each waifu asked for and did not get, and
-- why (only for waifus whose hellos were ever refused one).
CREATE TABLE IF NOT EXISTS hello_refusals (
    name    text PRIMARY KEY REFERENCES waifus (name) ON DELETE CASCADE,
    binds   text[] NOT NULL,
    reasons text[] NOT NULL,
    at      timestamptz NOT NULL DEFAULT now()
);
