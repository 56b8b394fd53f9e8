-- Rollouts: a new version of a waifu takes a growing share of new clients,
-- step by step, judged between steps, rolled back when it is worse. One row
-- per waifu: its latest rollout, running or over.
CREATE SEQUENCE IF NOT EXISTS rollout_generation;
CREATE TABLE IF NOT EXISTS rollouts (
    name              text PRIMARY KEY,
    -- the version rolled out ('' for instances that announce none)
    version           text NOT NULL,
    -- the version it replaces, as current before ('' for none)
    stable            text NOT NULL,
    steps             integer[] NOT NULL,
    -- index into steps of the share now
    step              integer NOT NULL DEFAULT 0,
    interval_ms       bigint NOT NULL,
    max_error_rate    double precision NOT NULL,
    max_latency_ratio double precision NOT NULL,
    state             text NOT NULL CHECK (state IN ('running', 'done', 'aborted')),
    -- percent of new clients sent to `version` now
    share             integer NOT NULL,
    generation        bigint NOT NULL,
    started_at        timestamptz NOT NULL DEFAULT now(),
    step_at           timestamptz NOT NULL DEFAULT now(),
    -- the figures of the last judgement, in words
    judged            text,
    started_by        text NOT NULL
);

-- Each orchestrator's counts of what each version answered during a
-- running rollout, since it started counting (cumulative); the health
-- leader sums them over orchestrators.
CREATE TABLE IF NOT EXISTS rollout_counts (
    name       text NOT NULL,
    generation bigint NOT NULL,
    version    text NOT NULL,
    origin     text NOT NULL,
    requests   bigint NOT NULL,
    failures   bigint NOT NULL,
    -- latency histogram, the proxy's buckets then +Inf (not cumulative)
    buckets    bigint[] NOT NULL,
    at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, generation, version, origin)
);
