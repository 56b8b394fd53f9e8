//! Integration tests: the real orchestrator, a real PostgreSQL cluster, real
//! HTTP waifus over real sockets.

#![allow(clippy::unwrap_used)]

mod harness;
mod pg;
mod waifu;

mod acme;
mod backups;
mod binary;
mod check;
mod claims;
mod data;
mod database;
mod deploy;
mod faults;
mod forwarding;
mod guard;
mod h2;
mod health;
mod hosts;
mod http1;
mod limits;
mod openapi;
mod ops;
mod ownership;
mod pause;
mod proxy;
mod registration;
mod replicas;
mod rollout;
mod rotate;
mod slowloris;
mod smuggling;
mod stall;
mod throttle;
mod tls;
mod upgrades;
