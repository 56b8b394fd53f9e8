//! A rollout as the proxy applies it: a new version takes a share of new
//! clients, each of which keeps its side (by a cookie) for the rollout's
//! life.

/// Which version a client is on during a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The version rolled out.
    New,
    /// The version it replaces (any other).
    Old,
}

/// A running rollout of one waifu, immutable: a change of share is a new
/// route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutRoute {
    /// Changes with every new rollout: a cookie of an earlier one is
    /// assigned afresh.
    pub generation: i64,
    /// The version rolled out (`None`: instances that announce none).
    pub version: Option<Box<str>>,
    /// Percent of new clients sent to it, 0 to 100.
    pub share: u8,
    /// `waifus_rollout_{name}`.
    cookie: Box<str>,
}

impl RolloutRoute {
    pub fn new(name: &str, generation: i64, version: Option<&str>, share: u8) -> Self {
        RolloutRoute {
            generation,
            version: version.map(Box::from),
            share: share.min(100),
            cookie: format!("waifus_rollout_{name}").into(),
        }
    }

    /// The cookie's name.
    pub fn cookie_name(&self) -> &str {
        &self.cookie
    }

    /// The cookie's value for `side`: the rollout and the side, nothing
    /// else (a version may hold characters a cookie may not).
    pub fn cookie_value(&self, side: Side) -> String {
        let s = match side {
            Side::New => "new",
            Side::Old => "old",
        };
        format!("{}-{s}", self.generation)
    }

    /// The side the request's cookie names for this rollout, if it has
    /// one; `cookies` are the values of its `Cookie` fields that are text.
    pub fn side_of<'v>(&self, cookies: impl IntoIterator<Item = &'v str>) -> Option<Side> {
        let new = self.cookie_value(Side::New);
        let old = self.cookie_value(Side::Old);
        for value in cookies {
            for pair in value.split(';') {
                let Some((name, v)) = pair.trim().split_once('=') else {
                    continue;
                };
                if name.trim() != &*self.cookie {
                    continue;
                }
                let v = v.trim().trim_matches('"');
                if v == new {
                    return Some(Side::New);
                }
                if v == old {
                    return Some(Side::Old);
                }
            }
        }
        None
    }

    /// The side of a new client, from `percent`, uniform in 0..100.
    pub fn assign(&self, percent: u8) -> Side {
        if percent < self.share {
            Side::New
        } else {
            Side::Old
        }
    }

    /// Whether `version` is the one rolled out.
    pub fn is_new(&self, version: Option<&str>) -> bool {
        self.version.as_deref() == version
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use http::header::COOKIE;

    fn cookies(h: &HeaderMap) -> impl Iterator<Item = &str> {
        h.get_all(COOKIE)
            .into_iter()
            .filter_map(|v| v.to_str().ok())
    }

    #[test]
    fn a_cookie_of_this_rollout_keeps_its_side_and_any_other_is_none() {
        let r = RolloutRoute::new("link", 7, Some("2.0"), 10);
        let mut h = HeaderMap::new();
        assert_eq!(r.side_of(cookies(&h)), None);
        h.append(
            COOKIE,
            "a=b; waifus_rollout_link=7-new; c=d".parse().unwrap(),
        );
        assert_eq!(r.side_of(cookies(&h)), Some(Side::New));
        let mut old = HeaderMap::new();
        old.append(COOKIE, "waifus_rollout_link=7-old".parse().unwrap());
        assert_eq!(r.side_of(cookies(&old)), Some(Side::Old));
        // An earlier rollout's cookie, another waifu's, garbage: assigned
        // afresh.
        for stale in [
            "waifus_rollout_link=6-new",
            "waifus_rollout_other=7-new",
            "waifus_rollout_link=7-sideways",
            "waifus_rollout_link",
        ] {
            let mut h = HeaderMap::new();
            h.append(COOKIE, stale.parse().unwrap());
            assert_eq!(r.side_of(cookies(&h)), None, "{stale}");
        }
    }

    #[test]
    fn the_share_decides_a_new_clients_side() {
        let r = RolloutRoute::new("link", 1, None, 10);
        let new = (0..100).filter(|p| r.assign(*p) == Side::New).count();
        assert_eq!(new, 10);
        assert_eq!(RolloutRoute::new("l", 1, None, 0).assign(0), Side::Old);
        assert_eq!(RolloutRoute::new("l", 1, None, 100).assign(99), Side::New);
    }
}
