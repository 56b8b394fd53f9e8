//! Integration tests: the real orchestrator, a real PostgreSQL cluster, real
//! HTTP waifus over real sockets.

#![allow(clippy::unwrap_used)]

mod harness;
mod pg;
mod waifu;

mod binary;
mod check;
mod database;
mod guard;
mod health;
mod openapi;
mod proxy;
mod registration;
mod smuggling;
