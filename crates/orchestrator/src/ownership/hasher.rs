//! Argon2id on a few dedicated threads that keep their memory.
//!
//! One Argon2id run with OWASP's parameters (m = 19 MiB, t = 2, p = 1) fills
//! 19 MiB of blocks. Run on tokio's blocking pool, each run could land on a
//! different thread, whose allocator arena then kept those 19 MiB: resident
//! memory grew by hundreds of MiB after a burst of database calls and never
//! came back. Here [`THREADS`] threads each own one block buffer, allocated
//! on their first run and reused by every later one, so Argon2 costs at most
//! `THREADS` × 19 MiB however many calls come, and at most `THREADS` runs
//! use the CPU at once. A thread that has had nothing to do for
//! [`KEEP_FOR`] frees its buffer, so an orchestrator whose waifus are all
//! provisioned goes back to its idle size.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::{Semaphore, oneshot};

/// Threads that run Argon2; each keeps one 19 MiB buffer once used.
pub(crate) const THREADS: usize = 2;
/// Largest memory cost a stored hash may ask for (64 MiB): a hash is only
/// ever written by this code with the default, so more is corrupt.
const MAX_BLOCKS: usize = 64 * 1024;
/// How long a thread keeps its buffer without a job.
const KEEP_FOR: std::time::Duration = std::time::Duration::from_secs(30);
/// Salt length (RFC 9106 recommends 16 bytes).
const SALT_LEN: usize = 16;

/// Why Argon2 could not run or produced no hash.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HashError {
    #[error("the hashing threads are gone (shutting down)")]
    Stopped,
    #[error("the operating system's random number generator failed: {0}")]
    Random(getrandom::Error),
    #[error("argon2: {0}")]
    Argon2(#[from] argon2::Error),
    #[error("encoding the hash: {0}")]
    Encode(#[from] argon2::password_hash::Error),
    #[error("encoding the hash: {0}")]
    Phc(#[from] argon2::password_hash::phc::Error),
}

enum Job {
    Hash {
        secret: String,
        reply: oneshot::Sender<Result<String, HashError>>,
    },
    Verify {
        secret: String,
        phc: String,
        reply: oneshot::Sender<bool>,
    },
}

/// Hashes and verifies secrets on [`THREADS`] dedicated threads.
#[derive(Debug)]
pub(crate) struct Hasher {
    queue: Arc<Queue>,
    /// One per thread: a job is queued only when a thread is free for it,
    /// so a caller that gives up waiting leaves no work behind.
    free: Semaphore,
}

/// Jobs waiting for a thread. Threads wait on the condition variable with
/// a timeout (the lock is not held while they wait), so each can tell that
/// it has been idle and free its buffer.
#[derive(Debug, Default)]
struct Queue {
    jobs: Mutex<Jobs>,
    ready: Condvar,
}

#[derive(Debug, Default)]
struct Jobs {
    waiting: VecDeque<Job>,
    /// The hasher was dropped: threads exit.
    closed: bool,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Job::Hash { .. } => "Job::Hash",
            Job::Verify { .. } => "Job::Verify",
        })
    }
}

impl Hasher {
    /// Starts the threads; they end when the hasher is dropped.
    pub(crate) fn start() -> std::io::Result<Hasher> {
        let queue = Arc::new(Queue::default());
        for i in 0..THREADS {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || work(&queue))?;
        }
        Ok(Hasher {
            queue,
            free: Semaphore::new(THREADS),
        })
    }

    /// An Argon2id PHC string of `secret`, with a random salt.
    pub(crate) async fn hash(&self, secret: &str) -> Result<String, HashError> {
        let (reply, answer) = oneshot::channel();
        let secret = secret.to_owned();
        self.run(Job::Hash { secret, reply }, answer).await?
    }

    /// Whether `secret` matches the stored PHC string `phc`.
    pub(crate) async fn verify(&self, secret: &str, phc: &str) -> Result<bool, HashError> {
        let (reply, answer) = oneshot::channel();
        let (secret, phc) = (secret.to_owned(), phc.to_owned());
        self.run(Job::Verify { secret, phc, reply }, answer).await
    }

    async fn run<T>(&self, job: Job, answer: oneshot::Receiver<T>) -> Result<T, HashError> {
        let _free = self.free.acquire().await.map_err(|_| HashError::Stopped)?;
        {
            let mut jobs = self.queue.jobs.lock().map_err(|_| HashError::Stopped)?;
            jobs.waiting.push_back(job);
        }
        self.queue.ready.notify_one();
        answer.await.map_err(|_| HashError::Stopped)
    }
}

impl Drop for Hasher {
    fn drop(&mut self) {
        if let Ok(mut jobs) = self.queue.jobs.lock() {
            jobs.closed = true;
        }
        self.queue.ready.notify_all();
    }
}

/// A thread's loop: its block buffer is kept between jobs, and freed once
/// it has waited [`KEEP_FOR`] without one.
fn work(queue: &Queue) {
    let mut blocks: Vec<Block> = Vec::new();
    loop {
        let job = {
            let Ok(mut jobs) = queue.jobs.lock() else {
                return;
            };
            loop {
                if jobs.closed {
                    return;
                }
                if let Some(job) = jobs.waiting.pop_front() {
                    break Some(job);
                }
                if blocks.is_empty() {
                    jobs = match queue.ready.wait(jobs) {
                        Ok(jobs) => jobs,
                        Err(_) => return,
                    };
                    continue;
                }
                let (again, waited) = match queue.ready.wait_timeout(jobs, KEEP_FOR) {
                    Ok(woken) => woken,
                    Err(_) => return,
                };
                jobs = again;
                if waited.timed_out() && jobs.waiting.is_empty() {
                    break None;
                }
            }
        };
        match job {
            None => blocks = Vec::new(),
            Some(Job::Hash { secret, reply }) => {
                let _ = reply.send(hash(&secret, &mut blocks));
            }
            Some(Job::Verify { secret, phc, reply }) => {
                let _ = reply.send(verify(&secret, &phc, &mut blocks));
            }
        }
    }
}

/// `blocks`, grown to `count` if it is smaller, as the slice a run needs.
fn memory(blocks: &mut Vec<Block>, count: usize) -> &mut [Block] {
    if blocks.len() < count {
        // Exact: the buffer is kept for the thread's life.
        blocks.reserve_exact(count - blocks.len());
        blocks.resize(count, Block::new());
    }
    &mut blocks[..count]
}

fn hash(secret: &str, blocks: &mut Vec<Block>) -> Result<String, HashError> {
    let params = Params::default();
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt).map_err(HashError::Random)?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let memory = memory(blocks, params.block_count());
    argon2.hash_password_into_with_memory(secret.as_bytes(), &salt, &mut out, memory)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params)?,
        salt: Some(Salt::new(&salt)?),
        hash: Some(Output::new(&out)?),
    };
    Ok(phc.to_string())
}

fn verify(secret: &str, phc: &str, blocks: &mut Vec<Block>) -> bool {
    let Ok(stored) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&stored.salt, &stored.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(stored.algorithm.as_str()) else {
        return false;
    };
    let version = match stored.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = Params::try_from(&stored) else {
        return false;
    };
    if params.block_count() > MAX_BLOCKS {
        return false;
    }
    let mut out = vec![0u8; expected.len()];
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let memory = memory(blocks, params.block_count());
    if argon2
        .hash_password_into_with_memory(secret.as_bytes(), salt, &mut out, memory)
        .is_err()
    {
        return false;
    }
    // `Output`'s equality is constant-time.
    Output::new(&out).is_ok_and(|computed| computed == *expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    #[tokio::test]
    async fn hashes_verify_both_ways_with_the_crates_own_code() {
        let hasher = Hasher::start().unwrap();
        let phc = hasher.hash("correct horse").await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(!phc.contains("correct horse"));
        assert!(hasher.verify("correct horse", &phc).await.unwrap());
        assert!(!hasher.verify("wrong horse", &phc).await.unwrap());
        assert!(!hasher.verify("correct horse", "not a hash").await.unwrap());
        // What the argon2 crate itself makes of ours, and we of its.
        let theirs = Argon2::default()
            .hash_password(b"s3cret")
            .unwrap()
            .to_string();
        assert!(hasher.verify("s3cret", &theirs).await.unwrap());
        assert!(!hasher.verify("s3creT", &theirs).await.unwrap());
        let ours = PasswordHash::new(&phc).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &ours)
                .is_ok()
        );
        // Other parameters and algorithms stored earlier still verify.
        let argon2i = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x10,
            Params::new(1024, 3, 1, None).unwrap(),
        );
        let older = argon2i.hash_password(b"old").unwrap().to_string();
        assert!(hasher.verify("old", &older).await.unwrap());
        assert!(!hasher.verify("new", &older).await.unwrap());
        // A memory cost no hash of ours has is refused without running.
        let huge = phc.replace("m=19456", "m=4194304");
        assert!(!hasher.verify("correct horse", &huge).await.unwrap());
    }

    #[tokio::test]
    async fn many_callers_share_the_threads() {
        let hasher = Arc::new(Hasher::start().unwrap());
        let phc = hasher.hash("x").await.unwrap();
        let calls: Vec<_> = (0..8)
            .map(|i| {
                let (hasher, phc) = (hasher.clone(), phc.clone());
                tokio::spawn(async move {
                    let secret = if i % 2 == 0 { "x" } else { "y" };
                    hasher.verify(secret, &phc).await.unwrap() == (i % 2 == 0)
                })
            })
            .collect();
        for call in calls {
            assert!(call.await.unwrap());
        }
    }
}
