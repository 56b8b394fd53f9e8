//! A hello: its binds checked, recorded in the store, applied to memory
//! and published; a new or unhealthy instance checked before the answer.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::{info, warn};
use waifus_protocol::{
    BindError, BindKey, BindOutcome, Hello, HelloResponse, RefusalReason, Upstream, parse_bind_key,
    parse_bind_target, parse_host, validate_name,
};

use super::health::{Ask, Watch};
use super::{Entry, HelloError, Registry, State};
use crate::ops::incidents::Incidents;
use crate::routing::Instance;
use crate::store::incidents::NewIncident;

/// A hello whose name, host, version, health path and limits are valid: checked once, before
/// anything else looks at it (ownership included), and all that
/// [`Registry::hello`] takes.
#[derive(Debug)]
pub(crate) struct ValidHello<'a> {
    hello: &'a Hello,
    upstream: Upstream,
    limits: waifus_protocol::RequestLimits,
}

impl<'a> ValidHello<'a> {
    pub(crate) fn check(hello: &'a Hello) -> Result<ValidHello<'a>, HelloError> {
        validate_name(&hello.name)?;
        let upstream = parse_host(&hello.host)?;
        if let Some(version) = &hello.version {
            waifus_protocol::validate_version(version)?;
        }
        if let Some(path) = &hello.health {
            waifus_protocol::validate_health_path(path)?;
        }
        let limits = match &hello.limits {
            Some(limits) => limits.check()?,
            None => waifus_protocol::RequestLimits::default(),
        };
        Ok(ValidHello {
            hello,
            upstream,
            limits,
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.hello.name
    }
}
use crate::store::{BindClaim, HelloRecord};

impl Registry {
    /// Handles `POST /__internal/hello` from `source`, whose ownership of
    /// the name was checked before. The `bind_taken` incidents are stored
    /// with the hello (with an outbox row each when there is a webhook),
    /// then noted in `incidents`.
    pub(crate) async fn hello(
        &self,
        hello: ValidHello<'_>,
        source: std::net::IpAddr,
        incidents: &Incidents,
    ) -> Result<HelloResponse, HelloError> {
        let ValidHello {
            hello,
            upstream,
            limits,
        } = hello;
        let webhook = incidents.webhook();
        let mut outcomes = Vec::with_capacity(hello.additional_binds.len());
        let mut parsed: Vec<Option<(BindKey, String)>> = Vec::new();
        let mut seen = HashSet::new();
        for (bind, target) in &hello.additional_binds {
            let checked = self.check_bind(bind, target);
            let checked = checked.and_then(|(key, target)| {
                // Two spellings of one (host, prefix) in a single hello.
                if seen.insert((key.host.clone(), key.prefix.clone())) {
                    Ok((key, target))
                } else {
                    Err(RefusalReason::Invalid)
                }
            });
            outcomes.push(BindOutcome {
                bind: bind.clone(),
                target: target.clone(),
                accepted: checked.is_ok(),
                reason: checked.as_ref().err().copied(),
            });
            parsed.push(checked.ok());
        }
        // Refused here (the store adds the taken ones): kept as what the
        // latest hello was refused.
        let refused: Vec<(&str, &str)> = outcomes
            .iter()
            .filter_map(|o| Some((o.bind.as_str(), refusal_text(o.reason?))))
            .collect();
        let claims: Vec<BindClaim<'_>> = parsed
            .iter()
            .flatten()
            .map(|(key, target)| BindClaim { key, target })
            .collect();

        let mut state = self.state.lock().await;
        // Kept by the entry, its route, the table and the health checks.
        let shared_name = state.shared_name(&hello.name);
        let known = state
            .waifus
            .get(hello.name.as_str())
            .and_then(|e| e.instances().iter().find(|i| i.upstream == upstream))
            .cloned();
        // The same instance, as it was: nothing about it changes. Another
        // version at its address, or one back after its goodbye, is a new
        // instance there.
        let same = known.as_ref().filter(|i| {
            !i.is_leaving()
                && i.version() == hello.version.as_deref()
                && i.health_path() == hello.health.as_deref()
                && *i.limits() == limits
        });
        // An instance that is not healthy (it may just have restarted) is
        // checked now, and a new one gets its first check, while the hello
        // commits; the answer waits for that check, so a waifu that is up is
        // routable once its hello is answered.
        let mut awaited = None;
        if let Some(instance) = same
            && !instance.is_healthy()
        {
            awaited = Some((instance.clone(), instance.checks()));
            let _ = self.watch.send(Ask::Recheck(instance.clone()));
        }
        // A new instance gets its first health check while the hello commits.
        let version = hello.version.as_deref();
        let mut fresh = None;
        if same.is_none() {
            let version_at = crate::routing::now_ms_i64();
            let instance = Arc::new(
                Instance::new(upstream.clone(), false)
                    .with_version(version, version_at)
                    .with_health_path(hello.health.as_deref())
                    .with_limits(limits),
            );
            let (committed, on_commit) = oneshot::channel();
            let _ = self.watch.send(Ask::Watch(Watch {
                name: shared_name.clone(),
                instance: instance.clone(),
                committed: Some(on_commit),
            }));
            fresh = Some((instance, committed, version_at));
        }
        let source = source.to_canonical().to_string();
        let version_at = fresh.as_ref().map(|(_, _, at)| *at);
        let granted = self
            .store
            .hello(&HelloRecord {
                name: &hello.name,
                instance: &upstream,
                version,
                version_at,
                claims: &claims,
                source: &source,
                webhook,
                health_path: hello.health.as_deref(),
                limits,
                refused: &refused,
                auto_rollout: self.auto_rollout.as_ref().map(|(steps, every)| {
                    let ms = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
                    (steps.as_slice(), ms)
                }),
                new_waifu: !state.waifus.contains_key(hello.name.as_str()),
            })
            .await?;
        let rollout = granted.rollout.clone();
        let reported: Vec<NewIncident> = granted
            .reported
            .into_iter()
            .map(|detail| NewIncident {
                kind: "bind_taken",
                name: hello.name.clone(),
                source: source.clone(),
                detail,
            })
            .collect();
        // The instance's version is current since when the store says:
        // its first announcement, not this hello (a restarted process of a
        // superseded version joins as older).
        let version_at = granted.version_at_ms;
        let mut version_moved = false;
        if let Some((instance, _, _)) = &fresh {
            instance.set_version_at(version_at);
        } else if let Some(instance) = same {
            version_moved = instance.set_version_at(version_at);
        }
        let mut granted = granted.granted.into_iter();
        // Kept as the waifu's binds: sized exactly, as a pushed-to vector
        // would hold room for four (240 bytes too many per waifu).
        let mut accepted = Vec::with_capacity(claims.len());
        for (outcome, parsed) in outcomes.iter_mut().zip(parsed) {
            let Some(bind) = parsed else { continue };
            if granted.next().unwrap_or(false) {
                accepted.push(bind);
            } else {
                warn!(name = %hello.name, bind = %outcome.bind, "bind refused: its host belongs to another waifu");
                outcome.accepted = false;
                outcome.reason = Some(RefusalReason::Taken);
            }
        }
        let before = state
            .waifus
            .get(hello.name.as_str())
            .map(|e| e.binds.clone());
        let (new_instance, committed) = match fresh {
            Some((instance, committed, _)) => (Some(instance), Some(committed)),
            None => (None, None),
        };
        Self::apply_hello(&mut state, &shared_name, accepted, new_instance.clone());
        if version_moved && let Some(entry) = state.waifus.get_mut(hello.name.as_str()) {
            entry.rearrange();
        }
        // A version rolled out by itself gets its share with its first
        // route, never every request first.
        let mut rolled_out = false;
        if let Some(rollout) = &rollout
            && let Some(entry) = state.waifus.get_mut(hello.name.as_str())
        {
            rolled_out = self.apply_rollout(&hello.name, entry, Some(rollout));
            info!(name = %hello.name, version = ?hello.version, share = rollout.share, "rollout started by itself");
        }
        self.touch(&mut state, &hello.name);
        let after = state.waifus.get(hello.name.as_str()).map(|e| &e.binds);
        // A repeated hello (SDKs re-hello every 30 s) changes nothing.
        if new_instance.is_some() || version_moved || rolled_out || before.as_ref() != after {
            let old = before.iter().flatten().map(|(key, _)| key.host.as_str());
            self.publish_waifu(&state, &hello.name, old);
        }
        drop(state);
        if let Some(instance) = &new_instance {
            // Replaced: the old one is no longer checked. (A leaving one
            // goes on draining what is in flight to it.)
            if let Some(old) = &known {
                old.retire();
            }
            info!(name = %hello.name, instance = %instance.upstream, version = ?instance.version(), "new instance");
            if instance.upstream.scheme == waifus_protocol::Scheme::Https {
                warn!(
                    name = %hello.name,
                    instance = %instance.upstream,
                    "TLS to instances is not supported yet: this instance will fail its \
                     health checks and not be routed to; register it with http://"
                );
            }
            awaited = Some((instance.clone(), 0));
        }
        if let Some(committed) = committed {
            let _ = committed.send(());
        }
        if let Some((instance, seen)) = awaited {
            instance.checked_since(seen, self.check_wait).await;
        }
        let response = HelloResponse {
            name: hello.name.clone(),
            url: format!("{}/{}", self.public_base, hello.name),
            binds: outcomes,
        };
        for incident in &reported {
            incidents.noted(incident);
        }
        Ok(response)
    }

    fn check_bind(&self, bind: &str, target: &str) -> Result<(BindKey, String), RefusalReason> {
        let refusal = |e: BindError| match e {
            BindError::InternalPath => RefusalReason::InternalPath,
            _ => RefusalReason::Invalid,
        };
        let key = parse_bind_key(bind).map_err(refusal)?;
        let target = parse_bind_target(target).map_err(refusal)?;
        if self.main_domain.as_deref() == Some(key.host.as_str()) {
            return Err(RefusalReason::MainDomain);
        }
        Ok((key, target.0))
    }

    /// Applies a recorded hello to memory: its binds, and its instance if
    /// new (replacing one at the same address).
    fn apply_hello(
        state: &mut State,
        name: &Arc<str>,
        binds: Vec<(BindKey, String)>,
        new_instance: Option<Arc<Instance>>,
    ) {
        let entry = state
            .waifus
            .entry(name.clone())
            .or_insert_with(|| Entry::new(name, Vec::new(), Vec::new()));
        entry.binds = binds;
        if let Some(instance) = new_instance {
            let mut instances: Vec<Arc<Instance>> = entry
                .instances()
                .iter()
                .filter(|i| i.upstream != instance.upstream)
                .cloned()
                .collect();
            instances.push(instance);
            entry.set_instances(instances);
        }
    }
}

/// Why a bind was refused, as the status page says it.
fn refusal_text(reason: RefusalReason) -> &'static str {
    match reason {
        RefusalReason::Invalid => {
            "invalid: not an absolute http(s) URL with a plain path and target"
        }
        RefusalReason::Taken => "taken: the host belongs to another waifu",
        RefusalReason::MainDomain => "main_domain: the main domain is routed by waifu name",
        RefusalReason::InternalPath => "internal_path: a segment starts with __internal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(name: &str, host: &str, version: Option<&str>) -> Hello {
        Hello {
            name: name.into(),
            host: host.into(),
            additional_binds: Default::default(),
            secret: None,
            version: version.map(Into::into),
            health: None,
            limits: None,
        }
    }

    #[test]
    fn a_hello_is_checked_once_whole() {
        let good = hello("link", "10.0.0.7:8080", Some("1.2.0"));
        let valid = ValidHello::check(&good).unwrap();
        assert_eq!(valid.name(), "link");
        assert_eq!(valid.upstream.authority(), "10.0.0.7:8080");
        for (bad, why) in [
            (hello("Link", "a:1", None), "invalid name"),
            (hello("__internal", "a:1", None), "invalid name"),
            (hello("link", "a b:1", None), "invalid host"),
            (hello("link", "a:99999", None), "invalid host"),
            (hello("link", "a:1", Some("")), "invalid version"),
            (hello("link", "a:1", Some("two words")), "invalid version"),
            (
                Hello {
                    health: Some("healthz".into()),
                    ..hello("link", "a:1", None)
                },
                "invalid health path",
            ),
        ] {
            let err = ValidHello::check(&bad).unwrap_err().to_string();
            assert!(err.starts_with(why), "{bad:?}: {err}");
        }
    }
}
