-- Versions move forward by themselves, never back.
--
-- Every version a waifu's instances ever announced ('' for none), with the
-- time it became current: when it was first announced, or when an operator
-- made it current again. Each instance's version_at is its version's
-- current_at, so the instance with the latest one still names the current
-- version, and a restarted process of an older version joins as older.
CREATE TABLE waifu_versions (
    name        text NOT NULL REFERENCES waifus (name) ON DELETE CASCADE,
    version     text NOT NULL,
    current_at  timestamptz NOT NULL,
    PRIMARY KEY (name, version)
);

INSERT INTO waifu_versions (name, version, current_at)
SELECT name, coalesce(version, ''), max(version_at)
FROM instances GROUP BY name, coalesce(version, '');

UPDATE instances i SET version_at = v.current_at
FROM waifu_versions v
WHERE v.name = i.name AND v.version = coalesce(i.version, '')
  AND i.version_at <> v.current_at;
