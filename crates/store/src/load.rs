//! Reading the stored waifus back: all of them at start and on a resync,
//! one when another orchestrator announces a change to it.

use waifus_protocol::{BindKey, Upstream};

use super::error::StoreError;
use super::{Store, switch_row};

/// A waifu as stored.
#[derive(Debug)]
pub struct StoredWaifu {
    pub name: String,
    pub instances: Vec<StoredInstance>,
    pub binds: Vec<(BindKey, String)>,
    /// Paused or in maintenance; `None`: open.
    pub switch: Option<switch_row::StoredSwitch>,
    /// Its running rollout, if one runs.
    pub rollout: Option<RunningRollout>,
}

/// A running rollout, as routing needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningRollout {
    pub generation: i64,
    /// `""`: instances that announce none.
    pub version: String,
    pub share: i32,
}

const ROLLOUT_COLUMNS: &str = "r.generation, r.version, r.share";

fn running_of(row: &tokio_postgres::Row, at: usize) -> RunningRollout {
    RunningRollout {
        generation: row.get(at),
        version: row.get(at + 1),
        share: row.get(at + 2),
    }
}

/// An instance as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredInstance {
    pub upstream: Upstream,
    pub healthy: bool,
    pub version: Option<String>,
    /// Unix milliseconds since which it announces `version`.
    pub version_at_ms: i64,
    /// Unix milliseconds of its goodbye, if it said one.
    pub goodbye_ms: Option<i64>,
    /// The health path its hello declared, if any.
    pub health_path: Option<String>,
    /// The limits its hello asked for.
    pub limits: waifus_protocol::RequestLimits,
}

/// The instance columns [`StoredInstance`] is read from, after `name` when
/// `with_name`.
const INSTANCE_COLUMNS: &str = "host, healthy, version,
    floor(extract(epoch FROM version_at) * 1000)::bigint,
    floor(extract(epoch FROM goodbye_at) * 1000)::bigint, health_path,
    max_body_size, max_in_flight, timeout_ms";

fn stored_instance(row: &tokio_postgres::Row, at: usize) -> Result<StoredInstance, StoreError> {
    let host: &str = row.get(at);
    let upstream = waifus_protocol::parse_host(host).map_err(|e| StoreError::Corrupt {
        what: format!("instance {host:?}: {e}"),
    })?;
    Ok(StoredInstance {
        upstream,
        healthy: row.get(at + 1),
        version: row.get(at + 2),
        version_at_ms: row.get(at + 3),
        goodbye_ms: row.get(at + 4),
        health_path: row.get(at + 5),
        limits: waifus_protocol::RequestLimits {
            max_body_size: row
                .get::<_, Option<i64>>(at + 6)
                .map(|b| u64::try_from(b).unwrap_or(0)),
            max_in_flight: row
                .get::<_, Option<i32>>(at + 7)
                .map(|n| u32::try_from(n).unwrap_or(1)),
            timeout: row
                .get::<_, Option<i64>>(at + 8)
                .map(|ms| std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
        },
    })
}

impl Store {
    /// One waifu as stored, or `None` when it is not registered.
    pub async fn load_waifu(&self, name: &str) -> Result<Option<StoredWaifu>, StoreError> {
        let client = self.pool.get().await?;
        if client
            .query_opt("SELECT 1 FROM waifus WHERE name = $1", &[&name])
            .await?
            .is_none()
        {
            return Ok(None);
        }
        let mut waifu = StoredWaifu {
            name: name.to_owned(),
            instances: Vec::new(),
            binds: Vec::new(),
            switch: client
                .query_opt(
                    &format!(
                        "SELECT {} FROM switches s WHERE s.name = $1",
                        switch_row::SWITCH_COLUMNS
                    ),
                    &[&name],
                )
                .await?
                .and_then(|r| switch_row::switch_of(&r, 0)),
            rollout: client
                .query_opt(
                    &format!(
                        "SELECT {ROLLOUT_COLUMNS} FROM rollouts r
                         WHERE r.name = $1 AND r.state = 'running'"
                    ),
                    &[&name],
                )
                .await?
                .map(|r| running_of(&r, 0)),
        };
        for row in client
            .query(
                &format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE name = $1"),
                &[&name],
            )
            .await?
        {
            waifu.instances.push(stored_instance(&row, 0)?);
        }
        for row in client
            .query("SELECT bind, target FROM binds WHERE name = $1", &[&name])
            .await?
        {
            let bind: &str = row.get(0);
            let key = waifus_protocol::parse_bind_key(bind).map_err(|e| StoreError::Corrupt {
                what: format!("bind {bind:?}: {e}"),
            })?;
            waifu.binds.push((key, row.get(1)));
        }
        Ok(Some(waifu))
    }

    /// Loads every waifu with its instances and binds.
    pub async fn load(&self) -> Result<Vec<StoredWaifu>, StoreError> {
        let client = self.pool.get().await?;
        let mut waifus: Vec<StoredWaifu> = client
            .query("SELECT name FROM waifus ORDER BY name", &[])
            .await?
            .iter()
            .map(|row| StoredWaifu {
                name: row.get(0),
                instances: Vec::new(),
                binds: Vec::new(),
                switch: None,
                rollout: None,
            })
            .collect();
        let find = |waifus: &mut Vec<StoredWaifu>, name: &str| {
            waifus.binary_search_by(|w| w.name.as_str().cmp(name)).ok()
        };
        // Decoding tens of thousands of rows takes milliseconds: requests
        // on this thread get a turn every few hundred (a periodic resync
        // runs this while proxying).
        for (n, row) in client
            .query(
                &format!("SELECT name, {INSTANCE_COLUMNS} FROM instances"),
                &[],
            )
            .await?
            .into_iter()
            .enumerate()
        {
            if n % 512 == 511 {
                tokio::task::yield_now().await;
            }
            let instance = stored_instance(&row, 1)?;
            if let Some(i) = find(&mut waifus, row.get(0)) {
                push_one(&mut waifus[i].instances, instance);
            }
        }
        for (n, row) in client
            .query("SELECT name, bind, target FROM binds", &[])
            .await?
            .into_iter()
            .enumerate()
        {
            if n % 512 == 511 {
                tokio::task::yield_now().await;
            }
            let bind: &str = row.get(1);
            let key = waifus_protocol::parse_bind_key(bind).map_err(|e| StoreError::Corrupt {
                what: format!("bind {bind:?}: {e}"),
            })?;
            if let Some(i) = find(&mut waifus, row.get(0)) {
                push_one(&mut waifus[i].binds, (key, row.get(2)));
            }
        }
        for row in client
            .query(
                &format!(
                    "SELECT s.name, {} FROM switches s",
                    switch_row::SWITCH_COLUMNS
                ),
                &[],
            )
            .await?
        {
            if let Some(i) = find(&mut waifus, row.get(0)) {
                waifus[i].switch = switch_row::switch_of(&row, 1);
            }
        }
        for row in client
            .query(
                &format!(
                    "SELECT r.name, {ROLLOUT_COLUMNS} FROM rollouts r WHERE r.state = 'running'"
                ),
                &[],
            )
            .await?
        {
            if let Some(i) = find(&mut waifus, row.get(0)) {
                waifus[i].rollout = Some(running_of(&row, 1));
            }
        }
        Ok(waifus)
    }
}

/// Pushes without the room for four that a first `push` makes: most waifus
/// have one instance and one bind, and a resync of 10,000 waifus held 9 MB
/// of such room for nothing.
fn push_one<T>(list: &mut Vec<T>, item: T) {
    list.reserve_exact(1);
    list.push(item);
}
