//! Pausing and resuming a waifu (and its maintenance), on every replica:
//! the switch is stored and announced like any change, each orchestrator
//! sets it on the waifu's route, and for a pause says, once nothing is in
//! flight to the waifu from it, that it holds the waifu's new requests, so
//! whoever paused it (a restore) knows when the waifu is idle everywhere.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use super::{Entry, Registry};
use crate::routing::switch::Setting;
use crate::store::StoreError;
use crate::store::switches::{StoredSwitch, SwitchMode};

/// Longest an orchestrator waits for requests in flight to a paused waifu
/// before it acknowledges the pause anyway.
const ACK_WAIT: Duration = Duration::from_secs(60);

impl Registry {
    /// Sets `name`'s switch here and in the store (audited from `source`,
    /// announced to the other orchestrators).
    pub(crate) async fn set_switch(
        &self,
        name: &str,
        mode: &SwitchMode,
        source: &str,
    ) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        let generation = self.store.set_switch(name, mode, source).await?;
        let shared: Arc<str> = name.into();
        if let Some(entry) = state.waifus.get_mut(name) {
            let stored = StoredSwitch {
                mode: mode.clone(),
                generation,
            };
            self.apply_switch(&shared, entry, Some(&stored));
        }
        self.touch(&mut state, name);
        Ok(())
    }

    /// Opens `name`'s switch here and in the store; whether it was set.
    pub(crate) async fn clear_switch(&self, name: &str, source: &str) -> Result<bool, StoreError> {
        self.clear_switch_if(name, None, source).await
    }

    /// The same, only if the switch is in `mode` (`paused`, `maintenance`).
    pub(crate) async fn clear_switch_if(
        &self,
        name: &str,
        mode: Option<&str>,
        source: &str,
    ) -> Result<bool, StoreError> {
        let mut state = self.state.lock().await;
        let cleared = match mode {
            None => self.store.clear_switch(name, source).await?,
            Some(mode) => self.store.clear_switch_if(name, mode, source).await?,
        };
        // Another mode stays as it is.
        if !cleared && mode.is_some() {
            return Ok(false);
        }
        let shared: Arc<str> = name.into();
        if let Some(entry) = state.waifus.get_mut(name) {
            self.apply_switch(&shared, entry, None);
        }
        self.touch(&mut state, name);
        Ok(cleared)
    }

    /// Makes the route's switch what the store says; a pause not seen
    /// before is acknowledged once nothing is in flight to the waifu.
    pub(super) fn apply_switch(
        &self,
        name: &Arc<str>,
        entry: &mut Entry,
        stored: Option<&StoredSwitch>,
    ) {
        let generation = stored.map(|s| s.generation);
        if entry.switch_generation == generation {
            return;
        }
        entry.switch_generation = generation;
        let setting = match stored.map(|s| &s.mode) {
            None => Setting::Open,
            Some(SwitchMode::Paused { max_wait }) => Setting::Paused {
                max_wait: *max_wait,
            },
            Some(SwitchMode::Maintenance {
                message,
                retry_after,
            }) => Setting::Maintenance {
                message: message.clone(),
                retry_after: *retry_after,
            },
        };
        entry.route.switch().set(&setting);
        debug!(name = %name, ?setting, "switch");
        if let (Some(generation), Setting::Paused { .. }) = (generation, &setting) {
            self.acknowledge_when_idle(name.clone(), entry, generation);
        }
    }

    /// Acknowledges pause `generation` of `name` once no request is in
    /// flight to its instances from here (or after [`ACK_WAIT`]).
    fn acknowledge_when_idle(&self, name: Arc<str>, entry: &Entry, generation: i64) {
        let instances = entry.instances().to_vec();
        let store = self.store.clone();
        let stop = self.shutdown.clone();
        tokio::spawn(async move {
            let idle = async {
                for instance in &instances {
                    instance.idle().await;
                }
            };
            let acknowledged = async {
                if tokio::time::timeout(ACK_WAIT, idle).await.is_err() {
                    warn!(name = %name, "requests still in flight after {} s: acknowledging the pause anyway", ACK_WAIT.as_secs());
                }
                if let Err(e) = store.ack_switch(&name, generation).await {
                    warn!(name = %name, error = %e, "could not acknowledge a pause");
                }
            };
            tokio::select! {
                () = stop.cancelled() => {}
                () = acknowledged => {}
            }
        });
    }
}
