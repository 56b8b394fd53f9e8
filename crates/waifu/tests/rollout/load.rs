//! The load: keep-alive clients sending GETs and POSTs the whole time, and what each request got.

use super::*;

/// `2026-12-05T01:08:03.424Z` in Unix milliseconds.
pub(crate) fn unix_ms(rfc3339: &str) -> u128 {
    let n = |from: usize, to: usize| -> i64 { rfc3339[from..to].parse().unwrap() };
    let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms = ((days * 24 + n(11, 13)) * 60 + n(14, 16)) * 60_000 + n(17, 19) * 1000 + n(20, 23);
    u128::try_from(ms).unwrap()
}

pub(crate) fn now_unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// What one request of the load got.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) started: Instant,
    pub(crate) ended: Instant,
    /// When it started and ended, in Unix milliseconds.
    pub(crate) wall: (u128, u128),
    /// The `x-key` of a POST.
    pub(crate) key: Option<String>,
    /// The status, or `None` when the connection failed.
    pub(crate) status: Option<u16>,
    pub(crate) body: String,
}

/// Eight keep-alive clients sending requests to `/{name}/` until stopped:
/// alternately `GET /` and, when `posts`, `POST /work` with a 4 KiB body.
pub(crate) struct Load {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) outcomes: Arc<Mutex<Vec<Outcome>>>,
    pub(crate) clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub(crate) fn start(public: SocketAddr, name: &str, posts: bool) -> Load {
        Load::posting_to(public, name, posts.then_some("/work"))
    }

    /// The same, with the POSTs (if any) sent to `post` (carrying their key
    /// in `x-key` as well).
    pub(crate) fn posting_to(public: SocketAddr, name: &str, post: Option<&str>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let clients = (0..CLIENTS)
            .map(|c| {
                let (stop, outcomes, name) = (stop.clone(), outcomes.clone(), name.to_owned());
                let post_path = post.map(str::to_owned);
                tokio::spawn(async move {
                    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
                        .pool_max_idle_per_host(1)
                        .build_http();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let post = post_path.is_some() && n.is_multiple_of(2);
                        let key = post.then(|| format!("c{c}-{n}"));
                        let mut request = http::Request::builder().header("host", "localhost");
                        let body = if let Some(key) = &key {
                            request = request
                                .method("POST")
                                .uri(format!(
                                    "http://{public}/{name}{}",
                                    post_path.as_deref().unwrap_or_default()
                                ))
                                .header("x-key", key);
                            Bytes::from(vec![b'x'; BODY])
                        } else {
                            request = request.uri(format!("http://{public}/{name}/"));
                            Bytes::new()
                        };
                        let started = Instant::now();
                        let wall_start = now_unix_ms();
                        let got = async {
                            let response = client
                                .request(request.body(Full::new(body)).unwrap())
                                .await
                                .ok()?;
                            let status = response.status().as_u16();
                            let body = response.into_body().collect().await.ok()?.to_bytes();
                            Some((status, String::from_utf8_lossy(&body).into_owned()))
                        };
                        let got = tokio::time::timeout(Duration::from_secs(60), got)
                            .await
                            .ok()
                            .flatten();
                        let (status, body) = match got {
                            Some((status, body)) => (Some(status), body),
                            None => (None, String::new()),
                        };
                        outcomes.lock().unwrap().push(Outcome {
                            started,
                            ended: Instant::now(),
                            wall: (wall_start, now_unix_ms()),
                            key,
                            status,
                            body,
                        });
                    }
                })
            })
            .collect();
        Load {
            stop,
            outcomes,
            clients,
        }
    }

    /// Waits until some answer's body starts with `prefix`; when it ended.
    pub(crate) async fn until_answered_by(&self, prefix: &str) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let first = self
                .outcomes
                .lock()
                .unwrap()
                .iter()
                .filter(|o| o.status == Some(200) && o.body.starts_with(prefix))
                .map(|o| o.ended)
                .min();
            if let Some(at) = first {
                return at;
            }
            assert!(Instant::now() < deadline, "nothing answered by {prefix:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.await.unwrap();
        }
        let outcomes = self.outcomes.lock().unwrap().clone();
        eprintln!(
            "{} requests, {} failed",
            outcomes.len(),
            outcomes.iter().filter(|o| o.status != Some(200)).count()
        );
        outcomes
    }
}

/// The keys written by the waifus' logs, with how often each was written.
pub(crate) fn done_keys(logs: &[&Path]) -> HashMap<String, usize> {
    let texts: Vec<String> = logs
        .iter()
        .map(|log| std::fs::read_to_string(log).unwrap_or_default())
        .collect();
    counted_keys(&texts.concat())
}

/// The keys in `text`, one per line (a tab ends a key), with how often
/// each is there.
pub(crate) fn counted_keys(text: &str) -> HashMap<String, usize> {
    let mut done = HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let key = line.split('\t').next().unwrap_or(line);
        *done.entry(key.to_owned()).or_insert(0) += 1;
    }
    done
}

/// Every POST that was answered 200 was done exactly once, and no POST was
/// done that the load did not send or was done twice.
pub(crate) fn each_post_done_once(outcomes: &[Outcome], logs: &[&Path]) {
    each_post_done_once_in(outcomes, done_keys(logs));
}

/// The same, for the keys an app lists.
pub(crate) fn each_post_done_once_in(outcomes: &[Outcome], done: HashMap<String, usize>) {
    let sent: HashMap<&str, &Outcome> = outcomes
        .iter()
        .filter_map(|o| o.key.as_deref().map(|k| (k, o)))
        .collect();
    assert!(sent.len() > 100, "the load sent only {} POSTs", sent.len());
    for (key, times) in &done {
        assert_eq!(*times, 1, "POST {key} was done {times} times");
        assert!(sent.contains_key(key.as_str()), "POST {key} was never sent");
    }
    for (key, outcome) in &sent {
        if outcome.status == Some(200) {
            assert!(
                done.contains_key(*key),
                "POST {key} answered 200 but not done"
            );
        }
    }
}

pub(crate) fn failures(outcomes: &[Outcome]) -> Vec<&Outcome> {
    outcomes.iter().filter(|o| o.status != Some(200)).collect()
}
