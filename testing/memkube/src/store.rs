//! The object store: every object as JSON, one global resourceVersion counter, the registry of
//! served types, and the history of changes that watches replay.
//!
//! One `std::sync::Mutex` guards it all: every verb is a short synchronous computation, and one
//! lock makes each write atomic with its watch event and with CRD registration. [`Store`] is the
//! cloneable handle; tests use its methods to read and change objects without HTTP (acting as a
//! kubelet or a controller), and those writes go through the same checks and emit the same events.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::error::ApiError;
use crate::resources::{self, GroupResource, ResourceType};

/// How many changes the store remembers for watches that resume from a resourceVersion.
pub(crate) const HISTORY: usize = 10_000;
/// Capacity of the live event channel; a watch that falls this far behind is ended (the client
/// re-watches from its last resourceVersion, or relists after a 410).
pub(crate) const CHANNEL: usize = 4_096;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed for good.
    Deleted,
}

impl EventKind {
    /// The watch event `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Added => "ADDED",
            EventKind::Modified => "MODIFIED",
            EventKind::Deleted => "DELETED",
        }
    }
}

/// One change, as watches see it.
#[derive(Debug)]
pub struct Event {
    /// The resourceVersion the change produced.
    pub rv: u64,
    /// Which collection.
    pub gr: GroupResource,
    /// The object's namespace, empty when cluster-scoped.
    pub namespace: String,
    /// What happened.
    pub kind: EventKind,
    /// The object after the change (for a deletion: its last state, with the deletion's rv).
    pub object: Value,
    /// The object before a modification, so a filtered watch can tell "started/stopped matching".
    pub old: Option<Value>,
}

type Key = (String, String);

/// Everything the lock guards.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) types: Vec<ResourceType>,
    objects: BTreeMap<GroupResource, BTreeMap<Key, Value>>,
    rv: u64,
    history: VecDeque<Arc<Event>>,
    /// The newest resourceVersion no longer in `history`: watches from older versions get a 410.
    compacted: u64,
    tx: broadcast::Sender<Arc<Event>>,
}

impl State {
    fn new() -> Self {
        let (tx, _) = broadcast::channel(CHANNEL);
        State {
            types: resources::builtins(),
            objects: BTreeMap::new(),
            rv: 0,
            history: VecDeque::new(),
            compacted: 0,
            tx,
        }
    }

    /// The served type at (group, version, plural).
    pub(crate) fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    /// Any served version of a group-resource (the first declared).
    pub(crate) fn find_gr(&self, gr: &GroupResource) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == gr.group && t.plural == gr.resource)
    }

    /// The current resourceVersion.
    pub(crate) fn rv(&self) -> u64 {
        self.rv
    }

    pub(crate) fn compacted(&self) -> u64 {
        self.compacted
    }

    pub(crate) fn get(&self, gr: &GroupResource, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(gr)?
            .get(&(ns.to_string(), name.to_string()))
    }

    /// Objects of a collection, in one namespace or all, ordered by (namespace, name).
    pub(crate) fn list(&self, gr: &GroupResource, ns: Option<&str>) -> Vec<&Value> {
        let Some(objs) = self.objects.get(gr) else {
            return Vec::new();
        };
        objs.iter()
            .filter(|((n, _), _)| ns.is_none_or(|want| want == n))
            .map(|(_, v)| v)
            .collect()
    }

    /// Every (collection, object) pair; for garbage collection's owner search.
    pub(crate) fn all(&self) -> impl Iterator<Item = (&GroupResource, &Value)> {
        self.objects
            .iter()
            .flat_map(|(gr, objs)| objs.values().map(move |v| (gr, v)))
    }

    /// Stores an object with the next resourceVersion and tells the watches.
    pub(crate) fn commit(&mut self, gr: &GroupResource, mut obj: Value, kind: EventKind) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let old = self
            .objects
            .entry(gr.clone())
            .or_default()
            .insert((ns.clone(), name), obj.clone());
        self.emit(Event {
            rv: self.rv,
            gr: gr.clone(),
            namespace: ns,
            kind,
            object: obj.clone(),
            old,
        });
        if gr.group == "apiextensions.k8s.io" {
            self.refresh_types();
        }
        obj
    }

    /// Removes an object for good, with a DELETED event.
    pub(crate) fn remove(&mut self, gr: &GroupResource, ns: &str, name: &str) -> Option<Value> {
        let mut obj = self
            .objects
            .get_mut(gr)?
            .remove(&(ns.to_string(), name.to_string()))?;
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.emit(Event {
            rv: self.rv,
            gr: gr.clone(),
            namespace: ns.to_string(),
            kind: EventKind::Deleted,
            object: obj.clone(),
            old: None,
        });
        if gr.group == "apiextensions.k8s.io" {
            self.refresh_types();
        }
        Some(obj)
    }

    fn emit(&mut self, event: Event) {
        let event = Arc::new(event);
        if self.history.len() >= HISTORY
            && let Some(dropped) = self.history.pop_front()
        {
            self.compacted = dropped.rv;
        }
        self.history.push_back(event.clone());
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(event);
    }

    /// Subscribes to live events and returns the retained ones newer than `since`, atomically.
    pub(crate) fn subscribe(
        &self,
        since: u64,
    ) -> (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>) {
        let backlog = self
            .history
            .iter()
            .filter(|e| e.rv > since)
            .cloned()
            .collect();
        (backlog, self.tx.subscribe())
    }

    /// Forgets the watch history (as etcd compaction does).
    pub(crate) fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// Re-derives the served types from the stored CRDs; drops objects of types no longer served.
    fn refresh_types(&mut self) {
        let crd_gr = GroupResource::new("apiextensions.k8s.io", "customresourcedefinitions");
        let crds: Vec<Value> = self.list(&crd_gr, None).into_iter().cloned().collect();
        let mut types = resources::builtins();
        for crd in &crds {
            types.extend(resources::from_crd(crd));
        }
        self.types = types;
        let orphaned: Vec<(GroupResource, Key)> = self
            .objects
            .iter()
            .filter(|(gr, _)| self.find_gr(gr).is_none())
            .flat_map(|(gr, objs)| objs.keys().map(move |k| (gr.clone(), k.clone())))
            .collect();
        for (gr, (ns, name)) in orphaned {
            self.remove(&gr, &ns, &name);
        }
    }
}

/// A cloneable handle on the store, shared by the HTTP server and tests.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Mutex<State>>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// An empty store with the `default`, `kube-system` and `kube-public` namespaces.
    pub fn new() -> Self {
        let store = Store {
            inner: Arc::new(Mutex::new(State::new())),
        };
        {
            let mut st = store.lock();
            for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                crate::ops::ensure_namespace(&mut st, ns);
            }
        }
        store
    }

    /// Locks the state; a panic while holding it cannot leave it half-written (each write commits
    /// at its end), so a poisoned lock is taken over.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The served type for a kubectl-style name (`pods`, `statefulsets.apps`).
    pub(crate) fn type_of(&self, gr: &str) -> Result<ResourceType, ApiError> {
        let gr = GroupResource::parse(gr);
        self.lock()
            .find_gr(&gr)
            .cloned()
            .ok_or_else(|| ApiError::no_route(&gr.to_string()))
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv()
    }

    /// Forgets the watch history, so a watch from any earlier resourceVersion gets 410 Gone.
    pub fn compact(&self) {
        self.lock().compact();
    }

    /// One object by kubectl-style resource name; `namespace` is `""` for cluster-scoped objects.
    pub fn get(&self, gr: &str, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .get(&GroupResource::parse(gr), namespace, name)
            .cloned()
    }

    /// Objects of a resource in one namespace, or in all when `namespace` is `None`.
    pub fn list(&self, gr: &str, namespace: Option<&str>) -> Vec<Value> {
        self.lock()
            .list(&GroupResource::parse(gr), namespace)
            .into_iter()
            .cloned()
            .collect()
    }
}
