//! Deletion: finalizers, and garbage collection of dependents through `ownerReferences`.
//!
//! - An object with finalizers is not removed by DELETE: it gets `deletionTimestamp` (a MODIFIED
//!   event) and stays until an update removes its last finalizer; then it is gone (DELETED).
//! - When an object is removed for good, every object whose `ownerReferences` names its uid, and
//!   that has no other owner still present, is deleted in turn (background cascade, recursively,
//!   across all resources, so a custom object can own built-ins). Dependents with finalizers get
//!   their `deletionTimestamp` and wait like any other object.
//! - `propagationPolicy=Orphan` removes the owner reference from dependents instead.
//!   `Foreground` is treated as `Background`: the owner goes first (simplification).
//! - Deleting a Namespace deletes everything in it, then the namespace (no Terminating phase).
//! - Deleting a CustomResourceDefinition removes all its objects.
//!
//! Unlike the real garbage collector, the cascade runs synchronously inside the DELETE; clients
//! that wait for dependents to go (as they must against a real cluster) see them gone at once.

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::ops::now;
use crate::resources::GroupResource;
use crate::store::{EventKind, State};

/// DELETE options.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeleteOpts {
    /// `propagationPolicy=Orphan`.
    pub orphan: bool,
    /// `dryRun=All`.
    pub dry_run: bool,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
}

/// Deletes one object; returns its state afterwards (with `deletionTimestamp` if it waits for
/// finalizers, or its last state if it is gone).
pub(crate) fn delete(
    st: &mut State,
    gr: &GroupResource,
    ns: &str,
    name: &str,
    opts: &DeleteOpts,
) -> Result<Value, ApiError> {
    let obj = st
        .get(gr, ns, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&gr.resource, &gr.group, name))?;
    let meta = &obj["metadata"];
    let uid_mismatch = opts
        .uid
        .as_deref()
        .is_some_and(|u| Some(u) != meta["uid"].as_str());
    let rv_mismatch = opts
        .resource_version
        .as_deref()
        .is_some_and(|r| Some(r) != meta["resourceVersion"].as_str());
    if uid_mismatch || rv_mismatch {
        return Err(ApiError::conflict_stale(&gr.resource, &gr.group, name));
    }
    if opts.dry_run {
        return Ok(obj);
    }
    let has_finalizers = meta["finalizers"].as_array().is_some_and(|f| !f.is_empty());
    if has_finalizers {
        if meta.get("deletionTimestamp").is_some() {
            return Ok(obj);
        }
        let mut marked = obj.clone();
        marked["metadata"]["deletionTimestamp"] = json!(now());
        marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        if let Some(g) = marked["metadata"]["generation"].as_i64() {
            marked["metadata"]["generation"] = json!(g + 1);
        }
        return Ok(st.commit(gr, marked, EventKind::Modified));
    }
    if gr.group.is_empty() && gr.resource == "namespaces" {
        empty_namespace(st, name);
    }
    if opts.orphan {
        orphan_dependents(st, meta["uid"].as_str().unwrap_or_default());
    }
    Ok(finalize(st, gr, obj))
}

/// Removes an object whose finalizers are all done, then collects its dependents.
pub(crate) fn finalize(st: &mut State, gr: &GroupResource, obj: Value) -> Value {
    let ns = obj["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let removed = st.remove(gr, &ns, &name).unwrap_or(obj);
    if let Some(uid) = removed["metadata"]["uid"].as_str() {
        collect_dependents(st, uid);
    }
    removed
}

fn owner_uids(obj: &Value) -> Vec<&str> {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str())
        .collect()
}

fn uid_exists(st: &State, uid: &str) -> bool {
    st.all()
        .any(|(_, o)| o["metadata"]["uid"].as_str() == Some(uid))
}

fn collect_dependents(st: &mut State, owner_uid: &str) {
    let dependents: Vec<(GroupResource, String, String, Vec<String>)> = st
        .all()
        .filter(|(_, o)| owner_uids(o).contains(&owner_uid))
        .map(|(gr, o)| {
            let m = &o["metadata"];
            let others = owner_uids(o)
                .into_iter()
                .filter(|u| *u != owner_uid)
                .map(str::to_string)
                .collect();
            (
                gr.clone(),
                m["namespace"].as_str().unwrap_or_default().to_string(),
                m["name"].as_str().unwrap_or_default().to_string(),
                others,
            )
        })
        .collect();
    for (gr, ns, name, other_owners) in dependents {
        if other_owners.iter().any(|u| uid_exists(st, u)) {
            continue;
        }
        // Already gone through an earlier branch of the cascade: nothing to do.
        let _ = delete(st, &gr, &ns, &name, &DeleteOpts::default());
    }
}

fn orphan_dependents(st: &mut State, owner_uid: &str) {
    let dependents: Vec<(GroupResource, Value)> = st
        .all()
        .filter(|(_, o)| owner_uids(o).contains(&owner_uid))
        .map(|(gr, o)| (gr.clone(), o.clone()))
        .collect();
    for (gr, mut obj) in dependents {
        if let Some(refs) = obj["metadata"]["ownerReferences"].as_array_mut() {
            refs.retain(|r| r["uid"].as_str() != Some(owner_uid));
        }
        st.commit(&gr, obj, EventKind::Modified);
    }
}

fn empty_namespace(st: &mut State, ns: &str) {
    let inside: Vec<(GroupResource, String)> = st
        .all()
        .filter(|(_, o)| o["metadata"]["namespace"].as_str() == Some(ns))
        .map(|(gr, o)| {
            (
                gr.clone(),
                o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    for (gr, name) in inside {
        let _ = delete(st, &gr, ns, &name, &DeleteOpts::default());
    }
}
