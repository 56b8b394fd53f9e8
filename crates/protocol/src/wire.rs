//! JSON bodies of the internal API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /__internal/hello`: a waifu announcing one of its instances.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub name: String,
    pub host: String,
    /// Public URL → path on the waifu. Optional; `null` means none.
    #[serde(
        rename = "additionalBinds",
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub additional_binds: BTreeMap<String, String>,
    /// Claims the name on first use; required once the name is claimed.
    /// `Debug` never shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// What this instance runs (1–64 visible ASCII). While an instance of
    /// the most recently announced version is healthy, only that version's
    /// instances get new requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Where the orchestrator checks this instance's health (any 2xx is
    /// healthy); `None`: `/__internal/health`, answering 204.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// What the proxy should enforce for this instance's requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<crate::Limits>,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("additional_binds", &self.additional_binds)
            .field("secret", &self.secret.as_ref().map(|_| "(hidden)"))
            .field("version", &self.version)
            .field("health", &self.health)
            .field("limits", &self.limits)
            .finish()
    }
}

/// `POST /__internal/goodbye`: an instance is leaving; it gets no new
/// request, and is removed once its requests in flight are done.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Goodbye {
    pub name: String,
    /// The host it said hello with.
    pub host: String,
    /// Required when the name is claimed. `Debug` never shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Answer only once nothing is in flight to the instance on the
    /// orchestrator asked, or its drain time is over, or a few seconds
    /// have passed (then the answer's `inFlight` is not 0: ask again).
    /// Asking again is cheap on the network and idempotent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wait: bool,
}

impl std::fmt::Debug for Goodbye {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Goodbye")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("secret", &self.secret.as_ref().map(|_| "(hidden)"))
            .field("wait", &self.wait)
            .finish()
    }
}

/// Answer to a goodbye.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoodbyeResponse {
    pub name: String,
    /// The instance, in canonical form (`http://host:port`).
    pub host: String,
    /// Always true: it gets no new request and drains.
    pub draining: bool,
    /// With `wait`: requests and upgraded connections still in flight to
    /// the instance on the orchestrator that answered (0: drained there).
    #[serde(rename = "inFlight", default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<u64>,
}

fn null_as_empty<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(Option::<BTreeMap<String, String>>::deserialize(d)?.unwrap_or_default())
}

/// Answer to a hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloResponse {
    pub name: String,
    /// Where the waifu is reachable on the main domain.
    pub url: String,
    pub binds: Vec<BindOutcome>,
}

/// What became of one requested bind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindOutcome {
    /// The bind key exactly as the waifu sent it.
    pub bind: String,
    pub target: String,
    pub accepted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RefusalReason>,
}

/// Stable machine codes for a refused bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// Not an absolute http(s) URL with a valid host and plain path, or a bad target.
    Invalid,
    /// Another waifu holds the same host and path prefix.
    Taken,
    /// The host is the main domain, which belongs to `/{name}` routing.
    MainDomain,
    /// The key or the target has a segment starting with `__internal`.
    InternalPath,
}

/// `POST /__internal/database`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseRequest {
    pub name: String,
    pub secret: String,
}

/// `POST /__internal/database/rotate`: the waifu's secret replaced, for
/// hellos and its database alike; the answer carries the new password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateRequest {
    pub name: String,
    pub secret: String,
    #[serde(rename = "newSecret")]
    pub new_secret: String,
}

impl std::fmt::Debug for RotateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotateRequest")
            .field("name", &self.name)
            .field("secret", &"(hidden)")
            .field("new_secret", &"(hidden)")
            .finish()
    }
}

impl std::fmt::Debug for DatabaseRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseRequest")
            .field("name", &self.name)
            .field("secret", &"(hidden)")
            .finish()
    }
}

/// Credentials handed to a waifu for its own database.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseCredentials {
    pub database: String,
    pub user: String,
    pub password: String,
    pub host: String,
    pub port: u16,
}

impl std::fmt::Debug for DatabaseCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseCredentials")
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish()
    }
}

/// One entry of `GET /__internal/waifus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaifuInfo {
    pub name: String,
    pub url: String,
    pub instances: Vec<InstanceInfo>,
    pub binds: Vec<BindInfo>,
    /// `open`, `paused` (new requests wait) or `maintenance` (503).
    #[serde(default = "open")]
    pub state: String,
}

fn open() -> String {
    "open".to_owned()
}

/// One registered instance of a waifu.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Canonical address, e.g. `http://link:8080`.
    pub host: String,
    pub healthy: bool,
    /// RFC 3339 time of the last completed check; `null` before the first.
    #[serde(rename = "lastCheck")]
    pub last_check: Option<String>,
    /// The version its hello announced, if any.
    #[serde(default)]
    pub version: Option<String>,
    /// It gets no new request: it said goodbye, or a newer version serves.
    #[serde(default)]
    pub draining: bool,
    /// The limits the proxy enforces for it: what its hello asked,
    /// clamped by the operator's maximums.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<crate::Limits>,
}

/// One accepted bind of a waifu.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindInfo {
    pub bind: String,
    pub target: String,
}

/// One entry of `GET /__internal/incidents`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentInfo {
    /// RFC 3339, UTC.
    pub time: String,
    /// `wrong_secret`, `throttled`, `bind_taken`, `hello_without_secret`,
    /// `hello_wrong_secret`, `unauthorized`, `name_claimed` or
    /// `claim_released`.
    pub kind: String,
    /// The waifu concerned.
    pub name: String,
    /// The client address the request came from.
    pub source: String,
    /// One human sentence; never a secret.
    pub detail: String,
    /// Whether it reached `INCIDENT_WEBHOOK_URL` (always false without one).
    #[serde(default)]
    pub delivered: bool,
}

/// One row of a waifu's health history: a change of one instance's state,
/// or of the waifu's switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// RFC 3339, UTC.
    pub time: String,
    /// The instance (`http://host:port`), or `None` for the waifu's switch.
    pub instance: Option<String>,
    /// The state before: `added`, `healthy`, `unhealthy`, `draining` for an
    /// instance; `open`, `paused`, `maintenance` for the switch; `None` when
    /// nothing was known (a new instance).
    pub from: Option<String>,
    /// The state after: as `from`, or `removed`.
    pub to: String,
    /// Why: `refused`, `timeout`, `status 500`, `status 204`, `hello`,
    /// `goodbye`, ...
    pub reason: String,
    /// The orchestrator that decided it.
    pub origin: String,
}

/// How a waifu fared over one window (`24h`, `7d`, `30d`): seconds up (at
/// least one healthy instance), down (instances, none healthy), and in
/// maintenance or paused (not counted as down). Time without any instance,
/// or before the waifu's first hello, is not counted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Availability {
    pub up: f64,
    pub down: f64,
    pub maintenance: f64,
    /// Outages that began within the window.
    pub outages: u32,
}

impl Availability {
    /// Up as a share of up and down (maintenance left out); `None` when
    /// neither was measured.
    pub fn uptime(&self) -> Option<f64> {
        let measured = self.up + self.down;
        (measured > 0.0).then(|| self.up / measured)
    }
}

/// `GET /__internal/waifus/{name}/history`: transitions, newest first, and
/// uptime per window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub name: String,
    pub transitions: Vec<Transition>,
    /// Share of measured time up, by window (`24h`, `7d`, `30d`); `null`
    /// when nothing was measured in it.
    pub uptime: std::collections::BTreeMap<String, Option<f64>>,
    /// The seconds behind each figure of `uptime`.
    pub availability: std::collections::BTreeMap<String, Availability>,
}

/// One entry of `GET /__internal/audit`: a change of routing or data state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// RFC 3339, UTC.
    pub time: String,
    /// `waifu_added`, `instance_added`, `bind_accepted`, `secret_claimed`, ...
    pub action: String,
    /// The waifu concerned.
    pub name: String,
    /// Who made the change: a client address, or `orchestrator`.
    pub source: String,
    /// One human sentence; never a secret.
    pub detail: String,
}

/// Every error body of the internal API: `{"error", "message"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine code, e.g. `invalid_name`.
    pub error: String,
    /// One human sentence saying what was wrong.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_shapes() {
        let h: Hello = serde_json::from_str(
            r#"{"name":"link","host":"link:8080","additionalBinds":{"https://link.waifu":"/link"}}"#,
        )
        .unwrap();
        assert_eq!(h.additional_binds["https://link.waifu"], "/link");
        let h: Hello =
            serde_json::from_str(r#"{"name":"a","host":"b","additionalBinds":null}"#).unwrap();
        assert!(h.additional_binds.is_empty());
        let h: Hello = serde_json::from_str(r#"{"name":"a","host":"b","extra":1}"#).unwrap();
        assert!(h.additional_binds.is_empty());
        assert!(serde_json::from_str::<Hello>(r#"{"name":"a"}"#).is_err());
        assert!(serde_json::from_str::<Hello>(r#"{"name":1,"host":"b"}"#).is_err());
    }

    #[test]
    fn refusal_codes_are_stable() {
        let codes: Vec<String> = [
            RefusalReason::Invalid,
            RefusalReason::Taken,
            RefusalReason::MainDomain,
            RefusalReason::InternalPath,
        ]
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
        assert_eq!(
            codes,
            [
                "\"invalid\"",
                "\"taken\"",
                "\"main_domain\"",
                "\"internal_path\""
            ]
        );
        let o = BindOutcome {
            bind: "x".into(),
            target: "/".into(),
            accepted: true,
            reason: None,
        };
        assert_eq!(
            serde_json::to_string(&o).unwrap(),
            r#"{"bind":"x","target":"/","accepted":true}"#
        );
    }

    #[test]
    fn credentials_debug_hides_password() {
        let c = DatabaseCredentials {
            database: "d".into(),
            user: "u".into(),
            password: "hunter2".into(),
            host: "h".into(),
            port: 5432,
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains(r#"database: "d""#), "{shown}");
        assert!(shown.contains("port: 5432"), "{shown}");
    }

    #[test]
    fn every_request_debug_shows_the_name_never_a_secret() {
        let hello = Hello {
            name: "shop".into(),
            host: "shop:80".into(),
            additional_binds: Default::default(),
            secret: Some("s3cret-a".into()),
            version: Some("7".into()),
            health: Some("/healthz".into()),
            limits: None,
        };
        let goodbye = Goodbye {
            name: "shop".into(),
            host: "shop:80".into(),
            secret: Some("s3cret-a".into()),
            wait: true,
        };
        let rotate = RotateRequest {
            name: "shop".into(),
            secret: "s3cret-a".into(),
            new_secret: "s3cret-b".into(),
        };
        let database = DatabaseRequest {
            name: "shop".into(),
            secret: "s3cret-a".into(),
        };
        for shown in [
            format!("{hello:?}"),
            format!("{goodbye:?}"),
            format!("{rotate:?}"),
            format!("{database:?}"),
        ] {
            assert!(shown.contains(r#"name: "shop""#), "{shown}");
            assert!(shown.contains("(hidden)"), "{shown}");
            assert!(!shown.contains("s3cret"), "{shown}");
        }
        assert!(format!("{hello:?}").contains(r#"Some("7")"#));
    }

    #[test]
    fn a_waifu_listed_without_a_state_is_open() {
        let w: WaifuInfo =
            serde_json::from_str(r#"{"name":"a","url":"u","instances":[],"binds":[]}"#).unwrap();
        assert_eq!(w.state, "open");
    }
}
