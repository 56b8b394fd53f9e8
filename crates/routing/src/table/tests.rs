use super::*;
use waifus_protocol::parse_host;

fn waifu(name: &str) -> Arc<WaifuRoute> {
    let inst = Arc::new(Instance::new(parse_host("h:1").unwrap(), true));
    Arc::new(WaifuRoute::new(name, vec![inst]))
}

fn bind(prefix: &str, target: &str, w: &Arc<WaifuRoute>) -> BindRoute {
    BindRoute {
        prefix: prefix.into(),
        target: target.into(),
        waifu: w.clone(),
        tls: false,
    }
}

#[test]
fn resolution() {
    let (link, other, root) = (waifu("link"), waifu("other"), waifu("root"));
    let binds = vec![
        ("link.waifu".to_string(), bind("", "/link", &link)),
        ("x.waifu".to_string(), bind("/p", "/t", &other)),
        ("x.waifu".to_string(), bind("/p/q", "", &link)),
        ("x.waifu".to_string(), bind("", "", &root)),
    ];
    let waifus = [link.clone(), other.clone(), root.clone()];
    let table = RouteTable::new(Some("localhost"), waifus.clone(), binds);
    type Case = (
        &'static str,
        &'static str,
        Option<(&'static str, &'static str, &'static str)>,
    );
    let cases: &[Case] = &[
        ("localhost", "/link", Some(("link", "/", "/link"))),
        ("localhost", "/link/", Some(("link", "/", "/link"))),
        ("localhost", "/link/a/b", Some(("link", "/a/b", "/link"))),
        ("localhost", "/linkx/a", None),
        ("localhost", "/", None),
        ("localhost", "/nope", None),
        ("elsewhere", "/link", None),
        ("link.waifu", "/", Some(("link", "/link", ""))),
        ("link.waifu", "/abc", Some(("link", "/link/abc", ""))),
        ("x.waifu", "/p", Some(("other", "/t", "/p"))),
        ("x.waifu", "/p/z", Some(("other", "/t/z", "/p"))),
        ("x.waifu", "/p/q", Some(("link", "/", "/p/q"))),
        ("x.waifu", "/p/q/r", Some(("link", "/r", "/p/q"))),
        ("x.waifu", "/pq", Some(("root", "/pq", ""))),
        ("x.waifu", "/", Some(("root", "/", ""))),
    ];
    for (host, path, want) in cases {
        let got = table
            .resolve(host, path)
            .map(|r| (r.waifu.name.to_string(), r.path.into_owned(), r.prefix));
        let want = want.map(|(n, p, pre)| (n.to_string(), p.to_string(), pre));
        assert_eq!(got, want, "{host} {path}");
    }
    let any = RouteTable::new(None, waifus, Vec::new());
    assert_eq!(
        any.resolve("whatever.example", "/other/x").map(|r| r.path),
        Some(Cow::Borrowed("/x"))
    );
}

/// Binds on the main domain (stored before it became the main domain) win
/// there as on any host, whether the table was built with them or they
/// came and went with a waifu's change; without them, names route.
#[test]
fn binds_on_the_main_domain_win_there() {
    use waifus_protocol::parse_bind_key;
    let (link, other) = (waifu("link"), waifu("other"));
    let binds = vec![("localhost".to_string(), bind("/link", "/in", &other))];
    let table = RouteTable::new(Some("localhost"), [link.clone(), other.clone()], binds);
    let route = |t: &RouteTable, path: &str| {
        t.resolve("localhost", path)
            .map(|r| (r.waifu.name.to_string(), r.path.into_owned()))
    };
    let bound = Some(("other".to_string(), "/in/x".to_string()));
    let named = Some(("link".to_string(), "/x".to_string()));
    assert_eq!(route(&table, "/link/x"), bound);
    let unbound = table.with_waifu("other", Some((&other, &[])), ["localhost"]);
    assert_eq!(route(&unbound, "/link/x"), named);
    let key = parse_bind_key("http://localhost/link").unwrap();
    let again = unbound.with_waifu("other", Some((&other, &[(key.clone(), "/in".into())])), []);
    assert_eq!(route(&again, "/link/x"), bound);
    let fresh = RouteTable::new(Some("localhost"), [link, other.clone()], Vec::new());
    assert_eq!(route(&fresh, "/link/x"), named);
    let bound_later = fresh.with_waifu("other", Some((&other, &[(key, "/in".into())])), []);
    assert_eq!(route(&bound_later, "/link/x"), bound);
}

/// Deriving a table after one waifu changed routes exactly like building
/// it from scratch: binds added, moved between hosts and dropped.
#[test]
fn incremental_update_matches_a_rebuild() {
    use waifus_protocol::parse_bind_key;
    let key = |b: &str| parse_bind_key(b).unwrap();
    let (a, b) = (waifu("a"), waifu("b"));
    let b_binds = [(key("http://shared.test/b"), String::new())];
    let full = |a_binds: &[(BindKey, String)], with_a: bool| {
        let mut binds: Vec<(String, BindRoute)> = Vec::new();
        let mut waifus = vec![b.clone()];
        for (w, list) in [(&b, &b_binds[..]), (&a, a_binds)] {
            if Arc::ptr_eq(w, &a) && !with_a {
                continue;
            }
            for (k, t) in list {
                binds.push((k.host.clone(), bind(&k.prefix, t, w)));
            }
        }
        if with_a {
            waifus.push(a.clone());
        }
        RouteTable::new(Some("localhost"), waifus, binds)
    };
    let probes = [
        ("localhost", "/a/x"),
        ("localhost", "/b/x"),
        ("shared.test", "/b/x"),
        ("shared.test", "/a/x"),
        ("shared.test", "/x"),
        ("one.test", "/x"),
        ("two.test", "/t/x"),
    ];
    let routes = |t: &RouteTable| -> Vec<Option<(String, String)>> {
        probes
            .iter()
            .map(|(h, p)| {
                t.resolve(h, p)
                    .map(|r| (r.waifu.name.to_string(), r.path.into_owned()))
            })
            .collect()
    };
    let steps: Vec<Option<Vec<(BindKey, String)>>> = vec![
        Some(vec![
            (key("http://one.test"), String::new()),
            (key("http://shared.test/a"), "/in".into()),
        ]),
        Some(vec![
            (key("http://two.test/t"), String::new()),
            (key("http://shared.test"), String::new()),
        ]),
        Some(vec![]),
        None,
    ];
    let mut table = full(&[], false);
    let mut old: Vec<BindKey> = Vec::new();
    for step in steps {
        let hosts: Vec<&str> = old.iter().map(|k| k.host.as_str()).collect();
        let next = table.with_waifu("a", step.as_ref().map(|s| (&a, s.as_slice())), hosts);
        let want = full(step.as_deref().unwrap_or(&[]), step.is_some());
        assert_eq!(routes(&next), routes(&want), "after {step:?}");
        assert_eq!(
            next.hosts.len(),
            want.hosts.len(),
            "no empty host lists left behind"
        );
        old = step
            .unwrap_or_default()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        table = next;
    }
}

#[test]
fn round_robin_skips_unhealthy() {
    let insts: Vec<_> = ["a:1", "b:1", "c:1"]
        .iter()
        .map(|h| Arc::new(Instance::new(parse_host(h).unwrap(), true)))
        .collect();
    insts[1].healthy.store(false, Ordering::Relaxed);
    let w = WaifuRoute::new("w", insts);
    let picks: Vec<_> = (0..4)
        .map(|_| w.pick().unwrap().upstream.host.clone())
        .collect();
    assert!(picks.iter().all(|h| h != "b"));
    assert!(picks.contains(&"a".to_string()) && picks.contains(&"c".to_string()));
    for i in w.instances.iter() {
        i.healthy.store(false, Ordering::Relaxed);
    }
    assert!(w.pick().is_none());
}

/// Instances of `w` at hosts `a:1`, `b:1`, …, each of `version` announced
/// at `at` (Unix ms).
fn instances(spec: &[(&str, &str, i64)]) -> Vec<Arc<Instance>> {
    spec.iter()
        .map(|(host, version, at)| {
            Arc::new(
                Instance::new(parse_host(host).unwrap(), true).with_version(Some(version), *at),
            )
        })
        .collect()
}

fn host_of(i: Option<&Arc<Instance>>) -> Option<String> {
    i.map(|i| i.upstream.host.clone())
}

#[test]
fn the_newest_version_takes_every_request_while_one_of_it_is_healthy() {
    let all = instances(&[
        ("old:1", "1", 100),
        ("new:1", "2", 200),
        ("newer:1", "2", 300),
    ]);
    let w = WaifuRoute::new("w", all.clone());
    assert_eq!(w.newest, 2, "both of version 2 first");
    let hosts: Vec<&str> = w
        .routable()
        .iter()
        .map(|i| i.upstream.host.as_str())
        .collect();
    assert_eq!(hosts[2], "old");
    assert!(w.draining(&all[0]), "the old version drains");
    assert!(!w.draining(&all[1]) && !w.draining(&all[2]));
    for _ in 0..6 {
        assert_ne!(host_of(w.pick()).as_deref(), Some("old"));
    }
    // No healthy instance of version 2: the old one serves again.
    all[1].healthy.store(false, Ordering::Relaxed);
    all[2].healthy.store(false, Ordering::Relaxed);
    assert!(!w.draining(&all[0]));
    assert_eq!(host_of(w.pick()).as_deref(), Some("old"));
    // One that said goodbye drains whatever its version, and is not routed.
    all[2].healthy.store(true, Ordering::Relaxed);
    assert!(all[2].leave(1));
    let w = w.rebuilt(all.clone());
    assert!(w.draining(&all[2]));
    assert_eq!(w.routable().len(), 2);
    assert_eq!(
        host_of(w.pick()).as_deref(),
        Some("old"),
        "new:1 is unhealthy"
    );
}

/// A route keeps a second list of its instances only when the routable
/// ones differ from them, or come in another order.
#[test]
fn routable_instances_are_kept_apart_only_when_they_differ() {
    let same = instances(&[("a:1", "1", 1), ("b:1", "1", 1)]);
    let w = WaifuRoute::new("w", same.clone());
    assert!(w.routable.is_none());
    assert_eq!(w.routable().len(), 2);
    // The newest version first: another order.
    let reordered = instances(&[("old:1", "1", 1), ("new:1", "2", 2)]);
    let w = WaifuRoute::new("w", reordered);
    let hosts: Vec<&str> = w
        .routable()
        .iter()
        .map(|i| i.upstream.host.as_str())
        .collect();
    assert_eq!(hosts, ["new", "old"]);
    // One leaving: fewer.
    assert!(same[1].leave(1));
    let w = w.rebuilt(same);
    let hosts: Vec<&str> = w
        .routable()
        .iter()
        .map(|i| i.upstream.host.as_str())
        .collect();
    assert_eq!(hosts, ["a"]);
    assert!(WaifuRoute::new("w", Vec::new()).routable().is_empty());
}

#[test]
fn a_retry_skips_the_instances_already_tried() {
    let all = instances(&[("a:1", "1", 1), ("b:1", "1", 1)]);
    let w = WaifuRoute::new("w", all.clone());
    for _ in 0..4 {
        assert_eq!(host_of(w.pick_except(&all[..1])).as_deref(), Some("b"));
    }
    assert!(w.pick_except(&all).is_none());
    let single = WaifuRoute::new("s", instances(&[("only:1", "1", 1)]));
    assert_eq!(host_of(single.pick()).as_deref(), Some("only"));
    single.instances[0].healthy.store(false, Ordering::Relaxed);
    assert!(single.pick().is_none());
    assert!(WaifuRoute::new("e", Vec::new()).pick().is_none());
}

#[test]
fn the_table_answers_what_its_readers_ask() {
    let (a, b) = (waifu("a"), waifu("b"));
    let mut tls = bind("", "", &b);
    tls.tls = true;
    let binds = vec![
        ("plain.test".to_string(), bind("", "", &a)),
        ("secure.test".to_string(), tls),
    ];
    let table = RouteTable::new(Some("main.test"), [a.clone(), b.clone()], binds.clone());
    let mut names: Vec<&str> = table.waifu_routes().map(|w| &*w.name).collect();
    names.sort_unstable();
    assert_eq!(names, ["a", "b"]);
    assert!(Arc::ptr_eq(table.waifu("a").unwrap(), &a));
    assert!(table.waifu("c").is_none());
    for (host, served) in [
        ("main.test", true),
        ("plain.test", true),
        ("secure.test", true),
        ("other.test", false),
    ] {
        assert_eq!(table.serves_host(host), served, "{host}");
    }
    assert_eq!(table.main_domain(), Some("main.test"));
    assert_eq!(table.tls_hosts().collect::<Vec<_>>(), ["secure.test"]);
    // A bind's scheme carries over when one waifu changes, too.
    let key = |b: &str| waifus_protocol::parse_bind_key(b).unwrap();
    let a_binds = [
        (key("https://s.test"), String::new()),
        (key("http://p.test"), String::new()),
    ];
    let hosts: [&str; 0] = [];
    let changed = table.with_waifu("a", Some((&a, &a_binds[..])), hosts);
    let mut secure: Vec<&str> = changed.tls_hosts().collect();
    secure.sort_unstable();
    assert_eq!(secure, ["s.test", "secure.test"]);
    let any = RouteTable::new(None, [a], binds);
    assert!(
        any.serves_host("other.test"),
        "MAIN_DOMAIN=* serves every host"
    );
    assert_eq!(any.main_domain(), None);
}

/// Whether any route has a rollout is kept as routes come, change and go.
#[test]
fn the_table_knows_whether_any_rollout_runs() {
    let (a, b) = (waifu("a"), waifu("b"));
    let rolling = |w: &Arc<WaifuRoute>| {
        let rollout = RolloutRoute::new(&w.name, 1, Some("2"), 10);
        Arc::new(w.with_rollout(Some(Arc::new(rollout))))
    };
    let none: [&str; 0] = [];
    let table = RouteTable::new(None, [a.clone(), b.clone()], Vec::new());
    assert!(!table.any_rollout());
    let table = RouteTable::new(None, [rolling(&a), b.clone()], Vec::new());
    assert!(table.any_rollout(), "built with one");
    // Two start, one ends, then the other's waifu goes.
    let table = table.with_waifu("b", Some((&rolling(&b), &[][..])), none);
    let table = table.with_waifu("a", Some((&a, &[][..])), none);
    assert!(table.any_rollout(), "b's still runs");
    let table = table.with_waifu("b", None, none);
    assert!(!table.any_rollout(), "b is gone");
    let table = table.with_waifu("c", Some((&rolling(&waifu("c")), &[][..])), none);
    assert!(table.any_rollout(), "a new waifu with one");
}
