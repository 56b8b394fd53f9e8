//! A string-keyed map that is cheap to copy and to change one entry in.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

/// Number of shards in a [`Shards`] map (a power of two).
const SHARDS: usize = 256;

/// Where in a key's hash the shard is picked from: bits the shard's own
/// table uses neither for its bucket (the low bits) nor for its tags (the
/// top seven), so the keys of one shard still spread over its table.
const SHARD_SHIFT: u32 = 32;

/// A string-keyed map that is cheap to copy and change one entry in: its
/// entries live in [`SHARDS`] hash tables behind `Arc`s, so a copy shares
/// them all and a write clones only the shard it changes (about 1/256 of
/// the entries). Copying a whole map of 10,000 routes and dropping the old
/// one took about a millisecond per hello; this takes microseconds.
///
/// A key is hashed once per lookup, with a key of the map's own (SipHash,
/// as `HashMap`'s), and that hash picks both the shard and the place in
/// it: names cannot be chosen to crowd one shard or one bucket.
#[derive(Debug, Clone)]
pub struct Shards<V> {
    hasher: std::hash::RandomState,
    shards: Vec<Arc<Shard<V>>>,
}

/// One shard: its entries, keyed by name.
type Shard<V> = HashTable<(Arc<str>, V)>;

impl<V> Default for Shards<V> {
    fn default() -> Self {
        Shards {
            hasher: std::hash::RandomState::new(),
            shards: (0..SHARDS).map(|_| Arc::new(HashTable::new())).collect(),
        }
    }
}

impl<V: Clone> Shards<V> {
    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(hash: u64) -> usize {
        (hash >> SHARD_SHIFT) as usize & (SHARDS - 1)
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        let hash = self.hash(key);
        self.shards[Self::shard(hash)]
            .find(hash, |(k, _)| **k == *key)
            .map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Inserts or replaces; clones the shard if another copy shares it.
    pub fn insert(&mut self, key: Arc<str>, value: V) {
        let hash = self.hash(&key);
        let hasher = &self.hasher;
        let shard = Arc::make_mut(&mut self.shards[Self::shard(hash)]);
        let rehash = |(k, _): &(Arc<str>, V)| hasher.hash_one(&**k);
        match shard.entry(hash, |(k, _)| *k == key, rehash) {
            Entry::Occupied(mut entry) => entry.get_mut().1 = value,
            Entry::Vacant(entry) => {
                entry.insert((key, value));
            }
        }
    }

    pub fn remove(&mut self, key: &str) {
        let hash = self.hash(key);
        let i = Self::shard(hash);
        // Only a shard that holds the key is cloned.
        if self.shards[i].find(hash, |(k, _)| **k == *key).is_none() {
            return;
        }
        let shard = Arc::make_mut(&mut self.shards[i]);
        if let Ok(entry) = shard.find_entry(hash, |(k, _)| **k == *key) {
            entry.remove();
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &V)> {
        self.shards
            .iter()
            .flat_map(|s| s.iter().map(|(k, v)| (k, v)))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

impl<V: Clone> FromIterator<(Arc<str>, V)> for Shards<V> {
    fn from_iter<I: IntoIterator<Item = (Arc<str>, V)>>(entries: I) -> Self {
        let mut map = Shards::default();
        for (key, value) in entries {
            map.insert(key, value);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy shares every shard until written; a write changes the copy
    /// only, and clones only the shard it touches.
    #[test]
    fn shards_copy_on_write() {
        let mut map: Shards<u32> = (0..1000u32)
            .map(|i| (Arc::from(i.to_string()), i))
            .collect();
        assert_eq!(map.len(), 1000);
        let before = map.clone();
        map.insert("5".into(), 55);
        map.insert("new".into(), 1);
        map.remove("7");
        map.remove("absent");
        assert_eq!((map.len(), before.len()), (1000, 1000));
        assert_eq!((map.get("5"), before.get("5")), (Some(&55), Some(&5)));
        assert_eq!((map.get("7"), before.get("7")), (None, Some(&7)));
        assert_eq!((map.get("new"), before.get("new")), (Some(&1), None));
        assert!(map.contains_key("999") && !map.contains_key("1000"));
        let shared = map
            .shards
            .iter()
            .zip(&before.shards)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert!(
            shared >= SHARDS - 3,
            "only written shards are copied: {shared} shared"
        );
        let mut keys: Vec<u32> = map.values().copied().collect();
        keys.sort_unstable();
        assert_eq!(keys.len(), 1000);
        assert_eq!(map.iter().count(), 1000);
    }
}
