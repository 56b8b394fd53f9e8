//! Reading the stored waifus back: all of them at start and on a resync,
//! one when another orchestrator announces a change to it.

use std::collections::HashMap;

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

    /// Every stored waifu, `size` at a time ([`Pages`]).
    pub fn pages(&self, size: usize) -> Pages<'_> {
        Pages {
            store: self,
            size,
            after: None,
            done: false,
        }
    }

    /// Up to `limit` stored waifus whose names come after `after` (from the
    /// first with `None`) in the store's order, each with its instances,
    /// binds, switch and running rollout.
    async fn load_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredWaifu>, StoreError> {
        let client = self.pool.get().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = match after {
            None => {
                client
                    .query("SELECT name FROM waifus ORDER BY name LIMIT $1", &[&limit])
                    .await?
            }
            Some(after) => {
                client
                    .query(
                        "SELECT name FROM waifus WHERE name > $1 ORDER BY name LIMIT $2",
                        &[&after, &limit],
                    )
                    .await?
            }
        };
        let mut waifus: Vec<StoredWaifu> = rows
            .iter()
            .map(|row| StoredWaifu {
                name: row.get(0),
                instances: Vec::new(),
                binds: Vec::new(),
                switch: None,
                rollout: None,
            })
            .collect();
        drop(rows);
        if waifus.is_empty() {
            return Ok(waifus);
        }
        // The page is a range of names in the store's order (its
        // collation's): the rows of its waifus are read by that range, an
        // index scan each, and a row of a waifu added inside the range
        // meanwhile is skipped. Each row finds its waifu by name.
        let (first, last) = (
            waifus[0].name.as_str(),
            waifus[waifus.len() - 1].name.as_str(),
        );
        let index: HashMap<&str, usize> = waifus.iter().map(|w| w.name.as_str()).zip(0..).collect();
        let find = |name: &str| index.get(name).copied();
        let instances = client
            .query(
                &format!(
                    "SELECT name, {INSTANCE_COLUMNS} FROM instances WHERE name BETWEEN $1 AND $2"
                ),
                &[&first, &last],
            )
            .await?;
        let binds = client
            .query(
                "SELECT name, bind, target FROM binds WHERE name BETWEEN $1 AND $2",
                &[&first, &last],
            )
            .await?;
        let switches = client
            .query(
                &format!(
                    "SELECT s.name, {} FROM switches s WHERE s.name BETWEEN $1 AND $2",
                    switch_row::SWITCH_COLUMNS
                ),
                &[&first, &last],
            )
            .await?;
        let rollouts = client
            .query(
                &format!(
                    "SELECT r.name, {ROLLOUT_COLUMNS} FROM rollouts r
                     WHERE r.state = 'running' AND r.name BETWEEN $1 AND $2"
                ),
                &[&first, &last],
            )
            .await?;
        // Which waifu of the page each row belongs to, found before the
        // page is filled in (the lookup borrows its names).
        let owners = |rows: &[tokio_postgres::Row]| -> Vec<Option<usize>> {
            rows.iter().map(|row| find(row.get(0))).collect()
        };
        let (at, bound) = (owners(&instances), owners(&binds));
        let (switched, rolling) = (owners(&switches), owners(&rollouts));
        for (row, i) in instances.iter().zip(at) {
            let instance = stored_instance(row, 1)?;
            if let Some(i) = i {
                push_one(&mut waifus[i].instances, instance);
            }
        }
        for (row, i) in binds.iter().zip(bound) {
            let bind: &str = row.get(1);
            let key = waifus_protocol::parse_bind_key(bind).map_err(|e| StoreError::Corrupt {
                what: format!("bind {bind:?}: {e}"),
            })?;
            if let Some(i) = i {
                push_one(&mut waifus[i].binds, (key, row.get(2)));
            }
        }
        for (row, i) in switches.iter().zip(switched) {
            if let Some(i) = i {
                waifus[i].switch = switch_row::switch_of(row, 1);
            }
        }
        for (row, i) in rollouts.iter().zip(rolling) {
            if let Some(i) = i {
                waifus[i].rollout = Some(running_of(row, 1));
            }
        }
        Ok(waifus)
    }
}

/// Every stored waifu, read a page at a time, each with its instances,
/// binds, switch and running rollout: only a page is in memory at once
/// (10,000 waifus read in one go held about 6 MB, which the process kept
/// after they were freed). Pages are read by name, each after the last
/// name of the one before, so a waifu added or removed meanwhile moves
/// no other from one page to another.
#[derive(Debug)]
pub struct Pages<'a> {
    store: &'a Store,
    size: usize,
    after: Option<String>,
    done: bool,
}

impl Pages<'_> {
    /// The next page, `None` after the last.
    pub async fn next(&mut self) -> Result<Option<Vec<StoredWaifu>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let page = self
            .store
            .load_page(self.after.as_deref(), self.size)
            .await?;
        self.done = page.len() < self.size;
        self.after = page.last().map(|w| w.name.clone());
        Ok(Some(page).filter(|p| !p.is_empty()))
    }
}

/// Pushes without the room for four that a first `push` makes: most waifus
/// have one instance and one bind, and a resync of 10,000 waifus held 9 MB
/// of such room for nothing.
fn push_one<T>(list: &mut Vec<T>, item: T) {
    list.reserve_exact(1);
    list.push(item);
}
