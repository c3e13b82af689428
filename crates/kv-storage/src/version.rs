//! Versions: defined in `kv-types`, shared with the replication layer.

pub use kv_types::{Version, Versioned};
