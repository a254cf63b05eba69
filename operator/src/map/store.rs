//! [`MapStore`]: the latest map of each cluster, written by the reconciler after every pass and
//! read by `GET /map.json`.
//!
//! Bounded: it holds at most [`MAX_CLUSTERS`] clusters; a pass for one more is not shown (and
//! says so in the log once) until a cluster is forgotten. Readers get a snapshot; a writer never
//! waits for a reader longer than a clone of the map's `Arc`s.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::model::{ClusterMap, ShardMap};

/// The most clusters one store shows.
pub const MAX_CLUSTERS: usize = 256;

/// The latest map of each cluster, keyed by namespace and name.
#[derive(Debug, Default)]
pub struct MapStore {
    clusters: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    maps: BTreeMap<(String, String), Arc<ClusterMap>>,
    /// A cluster was refused for lack of room (logged once until room is made).
    refused: bool,
}

impl MapStore {
    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.clusters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the map of `map`'s cluster. Returns false, keeping nothing, when the store
    /// already holds [`MAX_CLUSTERS`] other clusters.
    pub fn publish(&self, map: ClusterMap) -> bool {
        let key = (map.namespace.clone(), map.name.clone());
        let mut entries = self.lock();
        if !entries.maps.contains_key(&key) && entries.maps.len() >= MAX_CLUSTERS {
            if !entries.refused {
                tracing::warn!(namespace = %key.0, cluster = %key.1, limit = MAX_CLUSTERS,
                    "the shard map holds as many clusters as it may; this one is not shown");
                entries.refused = true;
            }
            return false;
        }
        entries.maps.insert(key, Arc::new(map));
        true
    }

    /// Forgets a deleted cluster.
    pub fn forget(&self, namespace: &str, name: &str) {
        let mut entries = self.lock();
        entries
            .maps
            .remove(&(namespace.to_owned(), name.to_owned()));
        entries.refused = false;
    }

    /// Forgets every cluster: a replica that stops leading shows no map rather than a stale one.
    pub fn clear(&self) {
        let mut entries = self.lock();
        entries.maps.clear();
        entries.refused = false;
    }

    /// Every cluster's latest map, ordered by namespace and name.
    pub fn snapshot(&self) -> ShardMap {
        let maps: Vec<Arc<ClusterMap>> = self.lock().maps.values().cloned().collect();
        ShardMap {
            clusters: maps.iter().map(|m| ClusterMap::clone(m)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(namespace: &str, name: &str, epoch: u64) -> ClusterMap {
        ClusterMap {
            namespace: namespace.into(),
            name: name.into(),
            epoch,
            ..ClusterMap::default()
        }
    }

    #[test]
    fn a_new_pass_replaces_the_clusters_map_and_a_deleted_cluster_is_forgotten() {
        let store = MapStore::default();
        assert!(store.publish(map("b", "chat", 1)));
        assert!(store.publish(map("a", "chat", 1)));
        assert!(store.publish(map("b", "chat", 2)));
        let shown: Vec<(String, u64)> = store
            .snapshot()
            .clusters
            .into_iter()
            .map(|m| (m.namespace, m.epoch))
            .collect();
        assert_eq!(shown, vec![("a".into(), 1), ("b".into(), 2)]);
        store.forget("a", "chat");
        assert_eq!(store.snapshot().clusters.len(), 1);
        store.clear();
        assert!(store.snapshot().clusters.is_empty());
    }

    #[test]
    fn a_full_store_refuses_new_clusters_but_still_updates_known_ones() {
        let store = MapStore::default();
        for i in 0..MAX_CLUSTERS {
            assert!(store.publish(map("ns", &format!("c{i}"), 1)));
        }
        assert!(!store.publish(map("ns", "one-more", 1)));
        assert!(store.publish(map("ns", "c0", 2)));
        let snapshot = store.snapshot();
        assert_eq!(snapshot.clusters.len(), MAX_CLUSTERS);
        assert!(snapshot.clusters.iter().all(|m| m.name != "one-more"));
        store.forget("ns", "c1");
        assert!(store.publish(map("ns", "one-more", 1)));
    }
}
