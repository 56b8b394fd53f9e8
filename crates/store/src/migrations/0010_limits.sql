-- The limits an instance's hello asked the proxy to enforce (NULL: none
-- asked; the operator's maximums still apply).
ALTER TABLE instances ADD COLUMN IF NOT EXISTS max_body_size bigint;
ALTER TABLE instances ADD COLUMN IF NOT EXISTS max_in_flight integer;
ALTER TABLE instances ADD COLUMN IF NOT EXISTS timeout_ms bigint;
