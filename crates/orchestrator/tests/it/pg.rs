//! The throwaway PostgreSQL cluster of this test binary (the workspace's
//! test support keeps it).

pub use waifus_testkit::pg::{PgCluster, cluster, dedicated, unique_db};
