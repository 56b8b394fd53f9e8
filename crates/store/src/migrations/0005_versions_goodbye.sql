-- Versions, goodbye and drain.

-- What an instance's hello announced it runs, and since when it announces
-- it (set when the row is added, its version changes, or it says hello again
-- after a goodbye): the instance with the latest one names the newest version.
ALTER TABLE instances ADD COLUMN version text;
ALTER TABLE instances ADD COLUMN version_at timestamptz NOT NULL
    DEFAULT date_trunc('milliseconds', now());
-- Set by a goodbye (to the millisecond): the instance gets no new request and
-- is removed once drained.
ALTER TABLE instances ADD COLUMN goodbye_at timestamptz;

-- A waifu whose last instance said goodbye stays (answering 503) until it
-- says hello again, or is forgotten after DEREGISTER_AFTER.
ALTER TABLE waifus ADD COLUMN empty_since timestamptz;
