//! The storage port of `kv-types` ([`ReplicaStore`]) implemented for
//! [`Store`]: each method is the `Store` method of the same name, its
//! error turned into its message.

use kv_types::{
    DurableTicket, ListPage, RangePage, RangesGuard, ReplicaStore, StoreError, StreamCursor,
    Version, Versioned,
};

use crate::error::Error;
use crate::store::Store;

impl From<Error> for StoreError {
    fn from(e: Error) -> StoreError {
        StoreError::new(e.to_string())
    }
}

impl From<DurableTicket> for crate::durable::Ticket {
    fn from(t: DurableTicket) -> crate::durable::Ticket {
        crate::durable::Ticket(t.0)
    }
}

impl ReplicaStore for Store {
    fn get_versioned(&self, key: &[u8]) -> Option<Versioned> {
        Store::get_versioned(self, key)
    }

    fn contains_key(&self, key: &[u8]) -> bool {
        Store::contains_key(self, key)
    }

    fn apply_with_expiry(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        version: Version,
        expires_at: Option<u64>,
    ) -> Result<bool, StoreError> {
        Ok(Store::apply_with_expiry(
            self, key, value, version, expires_at,
        )?)
    }

    fn max_timestamp(&self) -> u64 {
        Store::max_timestamp(self)
    }

    fn list_page_versioned(
        &self,
        prefix: &[u8],
        from: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> ListPage<Versioned> {
        Store::list_page_versioned(self, prefix, from, after, limit)
    }

    fn stream_page(
        &self,
        from: StreamCursor,
        max_bytes: usize,
        want: &dyn Fn(&[u8]) -> bool,
    ) -> (Vec<(Vec<u8>, Versioned)>, Option<StreamCursor>) {
        Store::stream_page(self, from, max_bytes, want)
    }

    fn shard_count(&self) -> usize {
        Store::shard_count(self)
    }

    fn track_ranges(&self, bounds: &[u64]) {
        Store::track_ranges(self, bounds)
    }

    fn range_hashes(&self) -> Vec<u64> {
        Store::range_hashes(self)
    }

    fn range_page(
        &self,
        range: usize,
        from: u64,
        until: u64,
        max_keys: usize,
        max_bytes: usize,
    ) -> RangePage {
        Store::range_page(self, range, from, until, max_keys, max_bytes)
    }

    fn drop_ranges(&self, ranges: &[(u64, u64)]) -> Result<usize, StoreError> {
        Ok(Store::drop_ranges(self, ranges)?)
    }

    fn drop_ranges_while<'a>(
        &self,
        ranges: &'a dyn Fn() -> RangesGuard<'a>,
    ) -> Result<usize, StoreError> {
        Ok(Store::drop_ranges_while(self, ranges)?)
    }

    fn snapshot(&self) -> Result<(), StoreError> {
        Ok(Store::snapshot(self)?)
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(Store::flush(self)?)
    }

    fn deferring(&self, f: &mut dyn FnMut()) -> Option<DurableTicket> {
        Store::deferring(self, f).ticket.map(|t| DurableTicket(t.0))
    }

    fn is_durable(&self, ticket: DurableTicket) -> Result<bool, StoreError> {
        Ok(Store::is_durable(self, ticket.into())?)
    }

    fn request_durable(&self, ticket: DurableTicket) {
        Store::request_durable(self, ticket.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Options;

    #[test]
    fn the_port_reaches_the_store_and_keeps_its_error_messages() {
        let store = Store::open(Options::in_memory()).expect("in-memory store");
        let port: &dyn ReplicaStore = &store;
        let v = Version::new(7, 1);
        assert_eq!(port.apply_with_expiry(b"k", Some(b"v"), v, None), Ok(true));
        assert_eq!(
            port.apply_with_expiry(b"k", None, Version::new(6, 1), None),
            Ok(false)
        );
        assert_eq!(port.get_versioned(b"k").map(|x| x.version), Some(v));
        assert!(port.contains_key(b"k"));
        assert_eq!(port.max_timestamp(), 7);
        assert_eq!(port.drop_ranges(&[(0, u64::MAX)]), Ok(1));
        assert!(!port.contains_key(b"k"));
        let e = Error::NotADirectory("/tmp/x".into());
        assert_eq!(
            StoreError::from(Error::NotADirectory("/tmp/x".into())).message(),
            e.to_string()
        );
    }
}
