//! A waifu's data: dumps, restores, copies kept aside, dropping it all.
//!
//! Everything here works on the server the orchestrator uses, as its user
//! (a superuser, or one with CREATEDB and CREATEROLE that is then made a
//! member of each waifu role it works on). `pg_dump` and `pg_restore` come
//! from the PostgreSQL installation the managed cluster uses ([`tools`]).
//!
//! - A dump is taken inside a repeatable-read transaction whose snapshot is
//!   exported to `pg_dump --snapshot`, so the figures recorded beside it
//!   ([`figures`]: rows and checksums per table) are of exactly the data
//!   in the file. It is written to a temporary file, fsynced and renamed.
//! - A restore goes into a fresh database owned by the waifu's role,
//!   `pg_restore --single-transaction --exit-on-error`, and is checked
//!   against the figures when they are known. Only then is it swapped in:
//!   the live database's sessions are ended and the two renamed in one
//!   transaction, the old one kept, closed, as `…_before_{time}`. A restore
//!   that fails leaves the live database as it was. The role and its
//!   password do not change, so the waifu's credentials keep working.
//! - Each action is one audit row.

pub(crate) mod backup;
mod dump;
mod error;
pub(crate) mod figures;
mod manage;
mod restore;
mod server;
pub(crate) mod tools;

pub use error::DataError;
pub(crate) use figures::Figures;
pub use manage::DatabaseInfo;
pub(crate) use server::Data;
