//! Real containers, the way users run waifus: images built here from nothing
//! but Debian's packages (mmdebstrap, `docker import`) and the workspace's own
//! binaries, and the stack of `deploy/compose.yaml` brought up with
//! docker-compose, used through its published port, restarted, scaled and
//! thinned under load; two orchestrators behind HAProxy with partitions;
//! `deploy/stack.yaml` on a single-node Docker Swarm of the test's own.
//!
//! The root filesystems are cached between runs under a tag derived from
//! their recipe (`waifus-test/base:<key>`, `waifus-test/postgres:<key>`); the
//! application images are rebuilt from the binaries of this build each run.
//! Without a Docker engine, mmdebstrap or docker-compose every test here
//! says SKIPPED and passes (a machine with only Rust and PostgreSQL runs the
//! rest of the suite), except under `CI=true`, where it fails naming what is
//! missing.

#![allow(clippy::unwrap_used)]

mod compose;
mod ha;
mod images;
mod support;
mod swarm;
