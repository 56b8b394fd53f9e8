-- The path an instance's hello asked to be checked at (NULL: the protocol's
-- /__internal/health).
ALTER TABLE instances ADD COLUMN IF NOT EXISTS health_path text;
