//! Integration tests: the real orchestrator, a real PostgreSQL cluster, real
//! HTTP waifus over real sockets.

#![allow(clippy::unwrap_used)]

mod harness;
mod pg;
mod relay;
mod request_limits;
mod waifu;

mod acme;
mod audit;
mod backups;
mod binary;
mod binary_load;
mod canary;
mod check;
mod claims;
mod compression;
mod conformance;
mod data;
mod database;
mod deploy;
mod faults;
mod forwarding;
mod guard;
mod h2;
mod health;
mod history;
mod hosts;
mod http1;
mod limits;
mod maintenance;
mod openapi;
mod ops;
mod ownership;
mod pause;
mod proxy;
mod proxy_limits;
mod registration;
mod replicas;
mod rollout;
mod rotate;
mod slowloris;
mod smuggling;
mod stall;
mod throttle;
mod tls;
mod tls_listener;
mod upgrades;
mod versions;
