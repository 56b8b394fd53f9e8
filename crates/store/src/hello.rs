//! A hello, recorded in one statement: the waifu, its instance and version,
//! the binds it asks for (each granted or found taken), the audit rows,
//! the incidents, and the change notification, in one transaction.

use waifus_protocol::{BindKey, Upstream};

use super::error::StoreError;
use super::{CHANGES, Store};

/// A hello to record: who said it, from where, and what it asks for.
#[derive(Debug, Clone, Copy)]
pub struct HelloRecord<'a> {
    pub name: &'a str,
    pub instance: &'a Upstream,
    pub version: Option<&'a str>,
    /// Unix milliseconds a new instance (or one replaced at its address)
    /// announces its version from; `None` for one known unchanged.
    pub version_at: Option<i64>,
    pub claims: &'a [BindClaim<'a>],
    /// The client address, for the audit rows and incidents.
    pub source: &'a str,
    /// Whether incidents also get an outbox row for the webhook.
    pub webhook: bool,
    /// The health path the hello declared, if any.
    pub health_path: Option<&'a str>,
    /// The limits the hello asked for.
    pub limits: waifus_protocol::RequestLimits,
    /// The binds it asked for that were refused before reaching the store
    /// (invalid ones), with their reasons: kept with the `taken` ones as
    /// what its latest hello was refused.
    pub refused: &'a [(&'a str, &'a str)],
    /// `ROLLOUT=auto`: the steps and the interval (milliseconds) of the
    /// rollout a version announced for the first time starts.
    pub auto_rollout: Option<(&'a [i32], i64)>,
    /// Whether the orchestrator holds no waifu of this name: a new
    /// instance's hello without binds is then first tried as the waifu's
    /// first ([`FIRST`]).
    pub new_waifu: bool,
}

/// What a hello's binds came to.
#[derive(Debug)]
pub struct Granted {
    /// Per bind asked for, whether this waifu holds it now.
    pub granted: Vec<bool>,
    /// The details of the `bind_taken` incidents the hello stored.
    pub reported: Vec<String>,
    /// Since when the announced version is current (Unix milliseconds):
    /// the instance's `version_at`.
    pub version_at_ms: i64,
    /// The rollout this hello started (`ROLLOUT=auto`), if it did.
    pub rollout: Option<super::RunningRollout>,
}

/// A hello in one statement (see [`Store::hello`]). Parameters: name,
/// instance, the binds asked for as four arrays (host, prefix, canonical
/// key, target), the change channel and payload, source, version,
/// version time, whether incidents go to a webhook, the health path, and
/// the limits (body bytes, requests in flight, timeout in ms), this
/// orchestrator's name for the history, and the binds refused before (keys
/// and reasons).
pub(crate) const HELLO: &str = "WITH waifu AS (
   INSERT INTO waifus (name) VALUES ($1)
   -- A repeated hello (every 30 s) rewrites no row that it leaves as it
   -- was; the row is locked all the same (ON CONFLICT DO UPDATE locks it
   -- whether or not its WHERE holds), so forgetting an empty waifu waits.
   ON CONFLICT (name) DO UPDATE SET updated_at = now(), empty_since = NULL
     WHERE waifus.empty_since IS NOT NULL
   RETURNING xmax = 0 AS added),
 prev AS (
   SELECT version, goodbye_at FROM instances WHERE name = $1 AND host = $2),
 at AS (
   SELECT coalesce(timestamptz 'epoch' + $11::bigint * interval '1 millisecond',
                   date_trunc('milliseconds', now())) AS t),
 -- The version current before this hello: the one current the latest.
 was AS (
   SELECT version FROM waifu_versions WHERE name = $1
   ORDER BY current_at DESC LIMIT 1),
 -- The announced version, known from now on: current since it was first
 -- announced (a version never seen before is current from this hello), or
 -- since an operator made it current again. The no-op update returns the
 -- committed row even when a concurrent hello added it after this
 -- statement's snapshot.
 ver AS (
   INSERT INTO waifu_versions (name, version, current_at)
   VALUES ($1, coalesce($10::text, ''), (SELECT t FROM at))
   ON CONFLICT (name, version) DO UPDATE SET current_at = waifu_versions.current_at
   RETURNING current_at, xmax = 0 AS added),
 instance AS (
   INSERT INTO instances (name, host, version, version_at, health_path,
                          max_body_size, max_in_flight, timeout_ms)
   VALUES ($1, $2, $10::text, (SELECT current_at FROM ver), $13::text,
           $14::bigint, $15::integer, $16::bigint)
   -- last_hello: the latest hello that changed the row. Unchanged, the
   -- row is not rewritten and not returned: what reads this part looks
   -- for an instance added, back after its goodbye or with another
   -- version, none of which an unchanged row is.
   ON CONFLICT (name, host) DO UPDATE SET
     last_hello = now(),
     version = EXCLUDED.version,
     version_at = EXCLUDED.version_at,
     health_path = EXCLUDED.health_path,
     max_body_size = EXCLUDED.max_body_size,
     max_in_flight = EXCLUDED.max_in_flight,
     timeout_ms = EXCLUDED.timeout_ms,
     healthy = instances.healthy AND instances.goodbye_at IS NULL
       AND instances.version IS NOT DISTINCT FROM EXCLUDED.version,
     goodbye_at = NULL
     WHERE instances.goodbye_at IS NOT NULL
        OR (instances.version, instances.version_at, instances.health_path,
            instances.max_body_size, instances.max_in_flight, instances.timeout_ms)
           IS DISTINCT FROM
           (EXCLUDED.version, EXCLUDED.version_at, EXCLUDED.health_path,
            EXCLUDED.max_body_size, EXCLUDED.max_in_flight, EXCLUDED.timeout_ms)
   RETURNING xmax = 0 AS added),
 -- The statement's snapshot: this waifu's binds before it.
 before AS (
   SELECT host, prefix, bind, target, since FROM binds WHERE name = $1),
 wanted AS (
   SELECT * FROM unnest($3::text[], $4::text[], $5::text[], $6::text[])
     AS c (host, prefix, bind, target)),
 mine AS (
   SELECT EXISTS (SELECT 1 FROM waifu_secrets WHERE name = $1) AS claimed),
 -- Since when this waifu holds each host: its oldest bind there.
 seniority AS (
   SELECT host, min(since) AS since FROM before GROUP BY host),
 -- Whom each wanted bind would trespass on, if anyone: another waifu with
 -- the same host and path; a claimed one that held the host before this
 -- waifu did; for a path this waifu does not hold yet, when this waifu is
 -- not claimed, a claimed one anywhere on the host, and when it is, any
 -- that held the host before it (a claimed waifu joins no host others
 -- use; only the host's first claimed holder adds paths to it).
 blocked AS (
   SELECT w.host, w.prefix,
     (SELECT b.name FROM binds b LEFT JOIN waifu_secrets s ON s.name = b.name
      WHERE b.host = w.host AND b.name <> $1
        AND (b.prefix = w.prefix
             OR (s.name IS NOT NULL AND b.since < coalesce(sn.since, 'infinity'))
             OR (m.host IS NULL AND s.name IS NOT NULL AND NOT (SELECT claimed FROM mine))
             OR (m.host IS NULL AND (SELECT claimed FROM mine)
                 AND b.since < coalesce(sn.since, 'infinity')))
      ORDER BY b.prefix = w.prefix DESC, b.since, b.name LIMIT 1) AS holder
   FROM wanted w
   LEFT JOIN before m ON m.host = w.host AND m.prefix = w.prefix
   LEFT JOIN seniority sn ON sn.host = w.host),
 claimed AS (
   INSERT INTO binds (host, prefix, bind, target, name)
   SELECT w.host, w.prefix, w.bind, w.target, $1
   FROM wanted w JOIN blocked x ON x.host = w.host AND x.prefix = w.prefix
   WHERE x.holder IS NULL
   -- One order for every hello: two claiming the same binds
   -- wait for each other instead of deadlocking.
   ORDER BY w.host, w.prefix
   ON CONFLICT (host, prefix) DO UPDATE
     SET bind = EXCLUDED.bind, target = EXCLUDED.target
     WHERE binds.name = EXCLUDED.name
   RETURNING host, prefix, bind, target),
 refused AS (
   SELECT w.host, w.prefix, w.bind, x.holder,
          'bind ' || w.bind || ' was refused: the host ' || w.host || ' belongs to ' ||
          coalesce(x.holder, 'another waifu') AS detail
   FROM wanted w JOIN blocked x ON x.host = w.host AND x.prefix = w.prefix
   WHERE NOT EXISTS (SELECT 1 FROM claimed c WHERE c.host = w.host AND c.prefix = w.prefix)),
 -- Refusals not reported in the last 10 minutes: incidents and audit rows.
 news AS (
   SELECT * FROM refused r
   WHERE NOT EXISTS (SELECT 1 FROM incidents i
                     WHERE i.name = $1 AND i.time > now() - interval '10 minutes'
                       AND i.kind = 'bind_taken' AND i.detail = r.detail)),
 reported AS (
   INSERT INTO incidents (time, kind, name, source, detail)
   SELECT now(), 'bind_taken', $1, $9, detail FROM news
   RETURNING id, detail),
 outbox AS (
   INSERT INTO webhook_outbox (incident_id) SELECT id FROM reported WHERE $12),
 released AS (
   DELETE FROM binds b WHERE b.name = $1 AND NOT EXISTS
     (SELECT 1 FROM claimed c WHERE c.host = b.host AND c.prefix = b.prefix)
   RETURNING b.bind, b.host, b.prefix),
 -- A new instance, or one new at its address, in the history.
 history AS (
   INSERT INTO health_history (name, instance, from_state, to_state, reason, origin)
   SELECT $1, $2, (SELECT h.to_state FROM health_history h
      WHERE h.name = $1 AND h.instance IS NOT DISTINCT FROM $2
      ORDER BY h.time DESC, h.id DESC LIMIT 1), 'added',
          CASE WHEN i.added THEN 'hello'
               WHEN p.goodbye_at IS NOT NULL THEN 'hello after its goodbye'
               ELSE 'hello with another version' END ||
          coalesce(', version ' || $10::text, ''), $17
   FROM instance i LEFT JOIN prev p ON true
   WHERE i.added OR p.goodbye_at IS NOT NULL OR p.version IS DISTINCT FROM $10::text),
 -- What this hello was refused, kept for the status page (written only for
 -- a waifu ever refused one, and only when it changes).
 refusals AS (
   INSERT INTO hello_refusals (name, binds, reasons)
   SELECT $1, coalesce(array_agg(x.bind ORDER BY x.bind), '{}'),
          coalesce(array_agg(x.reason ORDER BY x.bind), '{}')
   FROM (SELECT unnest($18::text[]) AS bind, unnest($19::text[]) AS reason
         UNION ALL
         SELECT bind, 'taken: the host ' || host || ' belongs to ' ||
                coalesce(holder, 'another waifu') FROM refused) x
   HAVING count(*) > 0 OR EXISTS (SELECT 1 FROM hello_refusals WHERE name = $1)
   ON CONFLICT (name) DO UPDATE
     SET binds = EXCLUDED.binds, reasons = EXCLUDED.reasons, at = now()
     WHERE hello_refusals.binds IS DISTINCT FROM EXCLUDED.binds
        OR hello_refusals.reasons IS DISTINCT FROM EXCLUDED.reasons
   RETURNING name),
 -- ROLLOUT=auto: a version never announced before, while instances of the
 -- one current before serve, rolls out over it instead of taking every
 -- request at once.
 auto AS (
   INSERT INTO rollouts (name, version, stable, steps, step, interval_ms, max_error_rate,
                         max_latency_ratio, state, share, generation, started_by)
   SELECT $1, coalesce($10::text, ''), w.version, $21::integer[], 0, $22::bigint, 0.01, 2.0,
          'running', ($21::integer[])[1], nextval('rollout_generation'), 'orchestrator'
   FROM was w
   WHERE $20 AND (SELECT added FROM ver) AND w.version <> coalesce($10::text, '')
     AND EXISTS (SELECT 1 FROM instances i WHERE i.name = $1 AND i.goodbye_at IS NULL
                   AND coalesce(i.version, '') = w.version)
   ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version, stable = EXCLUDED.stable,
     steps = EXCLUDED.steps, step = 0, interval_ms = EXCLUDED.interval_ms,
     max_error_rate = EXCLUDED.max_error_rate, max_latency_ratio = EXCLUDED.max_latency_ratio,
     state = 'running', share = EXCLUDED.share, generation = EXCLUDED.generation,
     started_at = now(), step_at = now(), judged = NULL, started_by = EXCLUDED.started_by
   RETURNING generation, version, stable, share),
 auto_noted AS (
   INSERT INTO health_history (name, instance, from_state, to_state, reason, origin)
   SELECT $1, NULL, NULL, 'rollout',
          coalesce(nullif(version, ''), 'no version') || ' to ' || share ||
          ' % of new clients (announced by instance ' || $2 || ')', $17
   FROM auto),
 -- What changed, one audit row each: a repeated hello adds none.
 audited AS (
   INSERT INTO audit (action, name, source, detail)
   SELECT 'waifu_added', $1, $9, 'first hello' FROM waifu WHERE added
   UNION ALL
   SELECT 'instance_added', $1, $9, 'instance ' || $2 ||
          coalesce(', version ' || $10::text, '')
   FROM instance WHERE added
   UNION ALL
   SELECT 'instance_added', $1, $9, 'instance ' || $2 ||
          CASE WHEN p.goodbye_at IS NOT NULL
            THEN ' is back after its goodbye'
            ELSE ' now runs another version' END ||
          coalesce(', version ' || $10::text, ', no version')
   FROM instance i, prev p
   WHERE NOT i.added AND (p.goodbye_at IS NOT NULL
     OR p.version IS DISTINCT FROM $10::text)
   UNION ALL
   SELECT 'version_current', $1, $9,
          'from ' || coalesce(nullif((SELECT version FROM was), ''), 'no version') ||
          ' to ' || coalesce($10::text, 'no version') ||
          ': first announced, by instance ' || $2
   FROM ver WHERE added AND (EXISTS (SELECT 1 FROM was) OR $10::text IS NOT NULL)
   UNION ALL
   SELECT 'bind_accepted', $1, $9, 'bind ' || c.bind || ' -> ' ||
          CASE WHEN c.target = '' THEN '/' ELSE c.target END
   FROM claimed c
   WHERE NOT EXISTS (SELECT 1 FROM before b WHERE b.host = c.host
     AND b.prefix = c.prefix AND b.bind = c.bind AND b.target = c.target)
   UNION ALL
   SELECT 'bind_released', $1, $9, 'bind ' || r.bind || ' released: ' ||
          CASE WHEN EXISTS (SELECT 1 FROM wanted w WHERE w.host = r.host AND w.prefix = r.prefix)
            THEN 'its host belongs to another waifu'
            ELSE 'not in the latest hello' END
   FROM released r
   UNION ALL
   SELECT 'bind_refused', $1, $9, detail FROM news
   UNION ALL
   SELECT 'bind_refused', holder, $9,
          'a bind of ' || $1 || ' on this waifu''s host was refused: ' || bind
   FROM news WHERE holder IS NOT NULL
   UNION ALL
   SELECT 'rollout_started', $1, 'orchestrator',
          coalesce(nullif(version, ''), 'no version') || ' rolls out over ' ||
          coalesce(nullif(stable, ''), 'no version') || ' by itself (ROLLOUT=auto): steps ' ||
          array_to_string($21::integer[], ', ') || ' %'
   FROM auto),
 -- Whether the hello changed anything the other orchestrators hold: only
 -- then are they told (each reloads the waifu named). A repeated hello
 -- that changes nothing (every 30 s per waifu) tells nobody.
 changed AS (
   SELECT EXISTS (SELECT 1 FROM waifu) OR (SELECT added FROM ver)
       OR EXISTS (SELECT 1 FROM instance)
       OR EXISTS (SELECT 1 FROM claimed c WHERE NOT EXISTS
            (SELECT 1 FROM before b WHERE b.host = c.host AND b.prefix = c.prefix
               AND b.bind = c.bind AND b.target = c.target))
       OR EXISTS (SELECT 1 FROM released) OR EXISTS (SELECT 1 FROM reported)
       OR EXISTS (SELECT 1 FROM refusals) OR EXISTS (SELECT 1 FROM auto) AS something)
 SELECT (SELECT array_agg(host) FROM claimed),
        (SELECT array_agg(prefix) FROM claimed),
        (SELECT array_agg(detail) FROM reported),
        (SELECT pg_notify($7, $8) FROM changed WHERE something),
        (SELECT floor(extract(epoch FROM current_at) * 1000)::bigint FROM ver),
        (SELECT generation FROM auto), (SELECT version FROM auto), (SELECT share FROM auto)";

/// A new waifu's first hello, without binds, in a statement of 5 parts
/// where [`HELLO`] has 23: the waifu, its version, its instance, the history
/// row and the audit rows, and the change notification, as `HELLO` writes
/// them for a waifu that did not exist (it then has no versions, binds,
/// refusals or instances: they go with the waifu). When the name exists
/// already, nothing is written and the version time comes back `NULL`: the
/// hello is then `HELLO`'s. Parameters: name, instance, the change channel
/// and payload, source, version, version time (Unix milliseconds), the
/// health path, the three limits, and this orchestrator's name for the
/// history.
///
/// `HELLO` sets up its executor for all its parts whatever a hello needs;
/// this costs PostgreSQL half the CPU for the same rows. A test holds the two
/// to the same rows for every first hello.
pub(crate) const FIRST: &str = "WITH waifu AS (
   -- Another orchestrator adding the name at the same time: this waits
   -- for it, then finds the name taken and writes nothing.
   INSERT INTO waifus (name) VALUES ($1) ON CONFLICT (name) DO NOTHING
   RETURNING name),
 ver AS (
   INSERT INTO waifu_versions (name, version, current_at)
   SELECT name, coalesce($6::text, ''),
          timestamptz 'epoch' + $7::bigint * interval '1 millisecond'
   FROM waifu
   RETURNING current_at),
 instance AS (
   INSERT INTO instances (name, host, version, version_at, health_path,
                          max_body_size, max_in_flight, timeout_ms)
   SELECT $1, $2, $6::text, current_at, $8::text, $9::bigint, $10::integer, $11::bigint
   FROM ver),
 -- The history outlives a forgotten waifu: a name back continues it.
 history AS (
   INSERT INTO health_history (name, instance, from_state, to_state, reason, origin)
   SELECT $1, $2, (SELECT h.to_state FROM health_history h
      WHERE h.name = $1 AND h.instance = $2
      ORDER BY h.time DESC, h.id DESC LIMIT 1), 'added',
          'hello' || coalesce(', version ' || $6::text, ''), $12
   FROM waifu),
 audited AS (
   INSERT INTO audit (action, name, source, detail)
   SELECT 'waifu_added', $1, $5, 'first hello' FROM waifu
   UNION ALL
   SELECT 'instance_added', $1, $5, 'instance ' || $2 || coalesce(', version ' || $6::text, '')
   FROM waifu
   UNION ALL
   SELECT 'version_current', $1, $5,
          'from no version to ' || $6::text || ': first announced, by instance ' || $2
   FROM waifu WHERE $6::text IS NOT NULL)
 SELECT (SELECT floor(extract(epoch FROM current_at) * 1000)::bigint FROM ver),
        (SELECT pg_notify($3, $4) FROM waifu)";

/// Whether a hello of a known instance would change nothing, read without
/// writing: the waifu is not empty; the instance is there, not gone, with
/// the same version (current since the instance's `version_at`), health
/// path and limits; its latest hello was refused nothing; and it holds
/// exactly the binds it asks for, alone on each of their hosts (so none
/// would be refused, released or taken back). One row, the version's
/// current time (Unix milliseconds), when so; none otherwise. Parameters:
/// name, instance, version, health path, the three limits, and the binds
/// as four arrays (host, prefix, canonical key, target).
///
/// Nothing is written, so an unchanged hello is ordered before any hello
/// or removal it overlaps. What it reads is durable: the columns it looks
/// at are written only by statements that wait for the disk (a synchronous
/// commit is visible only once flushed); health changes, committed without
/// waiting, write none of them.
pub(crate) const UNCHANGED: &str = "SELECT floor(extract(epoch FROM v.current_at) * 1000)::bigint
 FROM waifus w
 JOIN instances i ON i.name = w.name AND i.host = $2
 JOIN waifu_versions v ON v.name = w.name AND v.version = coalesce($3::text, '')
 WHERE w.name = $1 AND w.empty_since IS NULL AND i.goodbye_at IS NULL
   AND (i.version, i.version_at, i.health_path, i.max_body_size, i.max_in_flight, i.timeout_ms)
       IS NOT DISTINCT FROM
       ($3::text, v.current_at, $4::text, $5::bigint, $6::integer, $7::bigint)
   AND NOT EXISTS (SELECT 1 FROM hello_refusals r
                   WHERE r.name = $1 AND (r.binds <> '{}' OR r.reasons <> '{}'))
   AND (SELECT count(*) FROM binds b WHERE b.name = $1) = cardinality($8::text[])
   AND NOT EXISTS (
     SELECT 1 FROM unnest($8::text[], $9::text[], $10::text[], $11::text[])
       AS c (host, prefix, bind, target)
     WHERE NOT EXISTS (SELECT 1 FROM binds b WHERE b.host = c.host AND b.prefix = c.prefix
                         AND b.name = $1 AND b.bind = c.bind AND b.target = c.target)
        OR EXISTS (SELECT 1 FROM binds o WHERE o.host = c.host AND o.name <> $1))";

/// Takes the transaction locks of the hosts a hello binds on (parameter:
/// the hosts), in one order.
const LOCK_HOSTS: &str = "SELECT pg_advisory_xact_lock(hashtextextended('waifus-host:' || h, 0))
     FROM (SELECT DISTINCT h FROM unnest($1::text[]) h ORDER BY h) hosts";

/// One bind a hello asks for, already validated.
#[derive(Debug)]
pub struct BindClaim<'a> {
    pub key: &'a BindKey,
    pub target: &'a str,
}

impl Store {
    /// Records a hello atomically: the waifu, the instance (with its
    /// version), and the binds it asks for. Binds held by another waifu are
    /// not taken over; binds this waifu held but no longer asks for are
    /// released. Each change is one audit row from `source`, in the same
    /// statement. An instance that said goodbye is back; one whose version
    /// changed is a new instance at the same address: either way it starts
    /// unhealthy, announcing its version from now.
    ///
    /// A host belongs to one waifu once a claimed waifu holds a bind on it.
    /// A bind is refused when another waifu holds the same host and path;
    /// or a claimed waifu held a bind on the host before this one did (a
    /// bind this waifu holds is then released); or, for a path this waifu
    /// does not hold yet, a claimed waifu holds any path on the host, or
    /// this waifu is claimed and another held the host before it. So the
    /// first claimed holder of a host keeps it alone and may add paths
    /// under it, and waifus nobody claimed may share a host by path as
    /// before. Each refusal is a
    /// `bind_taken` incident naming the holder (at most one per bind every
    /// 10 minutes, as a waifu repeats its hello every 30 s) and a
    /// `bind_refused` audit row under both names, in the same statement;
    /// binds on one host are decided one hello at a time (a transaction
    /// lock per host), so two hellos cannot both take a host.
    ///
    /// One statement, so one round trip (with binds too: the hosts' locks,
    /// the statement and the commit are sent together). Data-modifying
    /// `WITH` parts all run and see the rows as they were before the
    /// statement; the foreign keys to `waifus` are checked at the end of
    /// the statement, after its insert. The claimed and the released binds
    /// are disjoint, so no row is touched twice.
    ///
    /// A new waifu's first hello without binds runs a statement of its own
    /// (`FIRST`), with the same effect for half PostgreSQL's CPU; a name
    /// that exists after all goes on to the full statement.
    ///
    /// A repeated hello that would change nothing (waifus repeat theirs
    /// every 30 s) is answered from one read (`UNCHANGED`): no write, no
    /// commit, nothing announced on [`CHANGES`]. One that may change
    /// something runs the statement, which rewrites no row it leaves as it
    /// was and is announced only when something changed; its binds are
    /// decided again, and a bind that changes hands is announced.
    pub async fn hello(&self, hello: &HelloRecord<'_>) -> Result<Granted, StoreError> {
        let HelloRecord {
            name,
            instance,
            version,
            version_at,
            claims,
            source,
            webhook,
            health_path,
            limits,
            refused,
            auto_rollout,
            new_waifu,
        } = *hello;
        let (auto, steps, interval_ms) = match auto_rollout {
            Some((steps, ms)) => (true, steps, ms),
            None => (false, &[][..], 0),
        };
        let refused_binds: Vec<&str> = refused.iter().map(|(b, _)| *b).collect();
        let refused_reasons: Vec<&str> = refused.iter().map(|(_, r)| *r).collect();
        let max_body_size = limits
            .max_body_size
            .map(|b| i64::try_from(b).unwrap_or(i64::MAX));
        let max_in_flight = limits
            .max_in_flight
            .map(|n| i32::try_from(n).unwrap_or(i32::MAX));
        let timeout_ms = limits
            .timeout
            .map(|t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX));
        let client = self.hellos.get().await?;
        let hosts: Vec<&str> = claims.iter().map(|c| c.key.host.as_str()).collect();
        let prefixes: Vec<&str> = claims.iter().map(|c| c.key.prefix.as_str()).collect();
        let canonical: Vec<String> = claims.iter().map(|c| c.key.canonical()).collect();
        let targets: Vec<&str> = claims.iter().map(|c| c.target).collect();
        let instance = instance.to_string();
        // A known instance's hello (no new version time) with nothing
        // refused before the store: when it would change nothing, it is
        // answered from one read, without a write or a commit to wait for.
        if version_at.is_none() && refused.is_empty() {
            let unchanged = client.prepare_cached(UNCHANGED).await?;
            let row = client
                .query_opt(
                    &unchanged,
                    &[
                        &name,
                        &instance,
                        &version,
                        &health_path,
                        &max_body_size,
                        &max_in_flight,
                        &timeout_ms,
                        &hosts,
                        &prefixes,
                        &canonical,
                        &targets,
                    ],
                )
                .await?;
            if let Some(row) = row {
                return Ok(Granted {
                    granted: vec![true; claims.len()],
                    reported: Vec::new(),
                    version_at_ms: row.get(0),
                    rollout: None,
                });
            }
        }
        // A new waifu's first hello, no binds: the short statement; when
        // the name turns out to be taken, the full one.
        if let Some(at) = version_at
            && new_waifu
            && claims.is_empty()
            && refused.is_empty()
        {
            let first = client.prepare_cached(FIRST).await?;
            let row = client
                .query_one(
                    &first,
                    &[
                        &name,
                        &instance,
                        &CHANGES,
                        &self.change(name),
                        &source,
                        &version,
                        &at,
                        &health_path,
                        &max_body_size,
                        &max_in_flight,
                        &timeout_ms,
                        &self.replica(),
                    ],
                )
                .await?;
            if let Some(version_at_ms) = row.get::<_, Option<i64>>(0) {
                return Ok(Granted {
                    granted: Vec::new(),
                    reported: Vec::new(),
                    version_at_ms,
                    rollout: None,
                });
            }
        }
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 22] = [
            &name,
            &instance,
            &hosts,
            &prefixes,
            &canonical,
            &targets,
            &CHANGES,
            &self.change(name),
            &source,
            &version,
            &version_at,
            &webhook,
            &health_path,
            &max_body_size,
            &max_in_flight,
            &timeout_ms,
            &self.replica(),
            &refused_binds,
            &refused_reasons,
            &auto,
            &steps,
            &interval_ms,
        ];
        let hello = client.prepare_cached(HELLO).await?;
        let row = if claims.is_empty() {
            client.query_one(&hello, &params).await?
        } else {
            // The hosts are locked first, in one order (two hellos wait
            // for each other instead of deadlocking), and the statement's
            // snapshot is taken after the locks, so it sees every hello
            // that held them before. The four requests go out together
            // (sent in this order when first polled, `biased`) and
            // PostgreSQL runs them in order: one round trip instead of
            // five. When one fails, the transaction is aborted and the
            // COMMIT ends it as a rollback, so the connection goes back
            // to the pool outside any transaction either way.
            let lock = client.prepare_cached(LOCK_HOSTS).await?;
            let locked_hosts: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&hosts];
            let (begin, locked, row, commit) = tokio::join!(
                biased;
                client.batch_execute("BEGIN"),
                client.execute(&lock, &locked_hosts),
                client.query_one(&hello, &params),
                client.batch_execute("COMMIT"),
            );
            begin?;
            locked?;
            let row = row?;
            commit?;
            row
        };
        let granted_hosts: Vec<String> = row.get::<_, Option<_>>(0).unwrap_or_default();
        let granted_prefixes: Vec<String> = row.get::<_, Option<_>>(1).unwrap_or_default();
        let reported: Vec<String> = row.get::<_, Option<_>>(2).unwrap_or_default();
        let rollout = row
            .get::<_, Option<i64>>(5)
            .map(|generation| super::RunningRollout {
                generation,
                version: row.get(6),
                share: row.get(7),
            });
        Ok(Granted {
            version_at_ms: row.get(4),
            rollout,
            reported,
            granted: claims
                .iter()
                .map(|c| {
                    granted_hosts
                        .iter()
                        .zip(&granted_prefixes)
                        .any(|(h, p)| *h == c.key.host && *p == c.key.prefix)
                })
                .collect(),
        })
    }
}
