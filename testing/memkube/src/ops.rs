//! The write pipeline every create, update, patch and apply goes through, HTTP or in-process.
//!
//! Order of work, as in the real server: identity checks → subresource scoping (main writes keep
//! `status`, `/status` writes keep everything else) → defaults and schema validation (custom
//! resources) → `generation` → field ownership → no-op detection (an unchanged object is not
//! written and produces no event, so controllers that re-apply the same state do not loop) →
//! commit with the next resourceVersion and a watch event. An update that removes the last
//! finalizer of an object being deleted completes the deletion instead (see `gc.rs`).

use serde_json::{Value, json};

use crate::apply::{self, Writer};
use crate::error::{ApiError, Cause};
use crate::fieldset::Scope;
use crate::merge;
use crate::resources::{GroupResource, ResourceType};
use crate::schema::{self, UnknownFields};
use crate::store::{EventKind, State};
use crate::{crd, gc, rules};

/// Per-request write options.
#[derive(Debug, Clone)]
pub(crate) struct Opts {
    /// `fieldManager`, or one derived from the User-Agent.
    pub manager: String,
    /// From `fieldValidation`.
    pub unknown: UnknownFields,
    /// `dryRun=All`: run every check, store nothing.
    pub dry_run: bool,
    /// `force` for server-side apply.
    pub force: bool,
    /// In-process writes by tests: status is writable through the main resource.
    pub privileged: bool,
}

impl Opts {
    /// Options for in-process writes made by tests through [`crate::Store`].
    pub(crate) fn privileged() -> Self {
        Opts {
            manager: "memkube".into(),
            unknown: UnknownFields::Refuse,
            dry_run: false,
            force: true,
            privileged: true,
        }
    }
}

/// The patch formats, by Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchKind {
    /// `application/merge-patch+json`
    Merge,
    /// `application/json-patch+json`
    Json,
    /// `application/strategic-merge-patch+json` (approximated, see `merge.rs`)
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply)
    Apply,
}

/// Now, as the API's RFC 3339 second-precision timestamp.
pub(crate) fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn scope(ty: &ResourceType, status: bool, opts: &Opts) -> Scope {
    if status {
        Scope::Status
    } else {
        Scope::Main {
            exclude_status: ty.has_status && !opts.privileged,
        }
    }
}

/// Creates the Namespace object for `ns` if it does not exist (namespaces are implicit here).
pub(crate) fn ensure_namespace(st: &mut State, ns: &str) {
    let gr = GroupResource::new("", "namespaces");
    if ns.is_empty() || st.get(&gr, "", ns).is_some() {
        return;
    }
    let obj = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": ns, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now(),
            "labels": {"kubernetes.io/metadata.name": ns}},
        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}
    });
    st.commit(&gr, obj, EventKind::Added);
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Checks and fills identity on a new object: kind, apiVersion, name (or generateName), namespace.
fn prepare_new(st: &State, ty: &ResourceType, ns: &str, obj: &mut Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the request body is not a JSON object",
        ));
    }
    if let Some(kind) = obj.get("kind").and_then(Value::as_str)
        && kind != ty.kind
    {
        return Err(ApiError::bad_request(format!(
            "kind {kind} does not match the resource {} ({})",
            ty.plural, ty.kind
        )));
    }
    obj["kind"] = json!(ty.kind);
    obj["apiVersion"] = json!(ty.api_version());
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let meta = &mut obj["metadata"];
    if meta["name"].as_str().is_none_or(str::is_empty) {
        match meta["generateName"].as_str() {
            Some(prefix) => {
                let suffix: String = uuid::Uuid::new_v4()
                    .simple()
                    .to_string()
                    .chars()
                    .take(5)
                    .collect();
                meta["name"] = json!(format!("{prefix}{suffix}"));
            }
            None => {
                let cause = Cause {
                    reason: "FieldValueRequired".into(),
                    message: "Required value: name or generateName is required".into(),
                    field: "metadata.name".into(),
                };
                return Err(ApiError::invalid(&ty.kind, &ty.group, "", vec![cause]));
            }
        }
    }
    let name = meta["name"].as_str().unwrap_or_default().to_string();
    if !is_dns_subdomain(&name) {
        let cause = Cause {
            reason: "FieldValueInvalid".into(),
            message: format!(
                "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
            field: "metadata.name".into(),
        };
        return Err(ApiError::invalid(&ty.kind, &ty.group, &name, vec![cause]));
    }
    if ty.namespaced {
        match meta["namespace"].as_str() {
            Some(given) if !given.is_empty() && given != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => meta["namespace"] = json!(ns),
        }
    } else if let Some(m) = meta.as_object_mut() {
        m.remove("namespace");
    }
    if st.get(&ty.group_resource(), ns, &name).is_some() {
        return Err(ApiError::already_exists(&ty.plural, &ty.group, &name));
    }
    if let Some(m) = meta.as_object_mut() {
        m.remove("resourceVersion");
        m.remove("deletionTimestamp");
        m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        m.insert("creationTimestamp".into(), json!(now()));
        m.insert("generation".into(), json!(1));
    }
    Ok(())
}

/// Creates an object (POST).
pub(crate) fn create(
    st: &mut State,
    ty: &ResourceType,
    ns: &str,
    mut obj: Value,
    opts: &Opts,
) -> Result<Value, ApiError> {
    prepare_new(st, ty, ns, &mut obj)?;
    finish(st, ty, None, obj, scope(ty, false, opts), opts, false)
}

/// Replaces an object (PUT), on the main resource or its status.
pub(crate) fn replace(
    st: &mut State,
    ty: &ResourceType,
    ns: &str,
    name: &str,
    mut obj: Value,
    status: bool,
    opts: &Opts,
) -> Result<Value, ApiError> {
    let old = st
        .get(&ty.group_resource(), ns, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&ty.plural, &ty.group, name))?;
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the request body is not a JSON object",
        ));
    }
    if let Some(body_name) = obj["metadata"]["name"].as_str()
        && body_name != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    check_rv(ty, name, &old, &obj)?;
    obj["kind"] = json!(ty.kind);
    obj["apiVersion"] = json!(ty.api_version());
    finish(
        st,
        ty,
        Some(&old),
        obj,
        scope(ty, status, opts),
        opts,
        false,
    )
}

/// A `metadata.resourceVersion` in a write is a precondition: it must be the current one.
fn check_rv(ty: &ResourceType, name: &str, old: &Value, new: &Value) -> Result<(), ApiError> {
    match new["metadata"]["resourceVersion"].as_str() {
        Some(rv) if !rv.is_empty() && Some(rv) != old["metadata"]["resourceVersion"].as_str() => {
            Err(ApiError::conflict_stale(&ty.plural, &ty.group, name))
        }
        _ => Ok(()),
    }
}

/// Patches an object (PATCH); server-side apply creates it when absent. Returns the object and
/// whether it was created.
#[allow(clippy::too_many_arguments)] // one per part of a PATCH request; a struct would only rename them
pub(crate) fn patch(
    st: &mut State,
    ty: &ResourceType,
    ns: &str,
    name: &str,
    kind: PatchKind,
    body: &Value,
    status: bool,
    opts: &Opts,
) -> Result<(Value, bool), ApiError> {
    let old = st.get(&ty.group_resource(), ns, name).cloned();
    let scope = scope(ty, status, opts);
    let now = now();
    let api_version = ty.api_version();
    let writer = Writer {
        manager: &opts.manager,
        api_version: &api_version,
        scope,
        schema: ty.schema.as_ref(),
        now: &now,
    };
    if kind == PatchKind::Apply {
        if body["metadata"]["name"].as_str().is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object does not match the name on the URL ({name})"
            )));
        }
        return match old {
            Some(old) => {
                check_rv(ty, name, &old, body)?;
                let new = apply::apply(&old, body, opts.force, &writer)?;
                Ok((finish(st, ty, Some(&old), new, scope, opts, true)?, false))
            }
            None if status => Err(ApiError::not_found(&ty.plural, &ty.group, name)),
            None => {
                let mut base = json!({"metadata": {"name": name, "namespace": ns}});
                prepare_new(st, ty, ns, &mut base)?;
                let mut applied = body.clone();
                if let Some(m) = applied.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("namespace");
                    m.remove("name");
                }
                let new = apply::apply(&base, &applied, opts.force, &writer)?;
                Ok((finish(st, ty, None, new, scope, opts, true)?, true))
            }
        };
    }
    let old = old.ok_or_else(|| ApiError::not_found(&ty.plural, &ty.group, name))?;
    let mut new = old.clone();
    match kind {
        PatchKind::Merge => merge::merge_patch(&mut new, body),
        PatchKind::Strategic => merge::strategic_merge_patch(&mut new, body, ty.schema.as_ref()),
        PatchKind::Json => merge::json_patch(&mut new, body)?,
        PatchKind::Apply => {}
    }
    check_rv(ty, name, &old, &new)?;
    Ok((finish(st, ty, Some(&old), new, scope, opts, false)?, false))
}

/// Metadata the server owns: a write cannot change it.
const SERVER_METADATA: [&str; 7] = [
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "name",
    "namespace",
];

fn content(v: &Value) -> Value {
    let mut c = v.clone();
    if let Some(m) = c.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    c
}

/// Equality for no-op detection: resourceVersion and managedFields timestamps do not count.
fn same(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v["metadata"].as_object_mut() {
            m.remove("resourceVersion");
            if let Some(Value::Array(entries)) = m.get_mut("managedFields") {
                for e in entries.iter_mut().filter_map(Value::as_object_mut) {
                    e.remove("time");
                }
            }
        }
        v
    };
    strip(a) == strip(b)
}

fn finish(
    st: &mut State,
    ty: &ResourceType,
    old: Option<&Value>,
    mut new: Value,
    scope: Scope,
    opts: &Opts,
    from_apply: bool,
) -> Result<Value, ApiError> {
    let gr = ty.group_resource();
    if let Some(old) = old {
        for key in SERVER_METADATA {
            match old["metadata"].get(key) {
                Some(v) => new["metadata"][key] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(key);
                    }
                }
            }
        }
    }
    match scope {
        Scope::Main {
            exclude_status: true,
        } => match old.and_then(|o| o.get("status")) {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
                if old.is_none() && ty.kind == "Pod" && ty.group.is_empty() {
                    new["status"] = json!({"phase": "Pending"});
                }
            }
        },
        Scope::Status => {
            let mut kept = old.cloned().unwrap_or_default();
            match new.get("status") {
                Some(s) => kept["status"] = s.clone(),
                None => {
                    if let Some(m) = kept.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            if from_apply {
                kept["metadata"]["managedFields"] = new["metadata"]["managedFields"].take();
            }
            new = kept;
        }
        Scope::Main {
            exclude_status: false,
        } => {}
    }
    if ty.kind == "CustomResourceDefinition" && ty.group == "apiextensions.k8s.io" {
        crd::check(&new)?;
        crd::establish(&mut new, old);
    }
    let name = new["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if let Some(root) = &ty.schema {
        schema::apply_defaults(&mut new, root);
        let mut causes = schema::validate_object(&mut new, root, opts.unknown);
        if let Some(old) = old {
            rules::check_transitions(&new, old, root, "", &mut causes);
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(&ty.kind, &ty.group, &name, causes));
        }
    }
    if let Some(old) = old
        && content(old) != content(&new)
    {
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        new["metadata"]["generation"] = json!(generation + 1);
    }
    if !from_apply {
        let now = now();
        let api_version = ty.api_version();
        let writer = Writer {
            manager: &opts.manager,
            api_version: &api_version,
            scope,
            schema: ty.schema.as_ref(),
            now: &now,
        };
        apply::track_update(old, &mut new, &writer);
    }
    if let Some(old) = old
        && same(old, &new)
    {
        return Ok(old.clone());
    }
    if opts.dry_run {
        return Ok(new);
    }
    let finalizers_done = new["metadata"]["finalizers"]
        .as_array()
        .is_none_or(Vec::is_empty);
    if old.is_some() && new["metadata"].get("deletionTimestamp").is_some() && finalizers_done {
        return Ok(gc::finalize(st, &gr, new));
    }
    if ty.namespaced {
        ensure_namespace(
            st,
            new["metadata"]["namespace"].as_str().unwrap_or_default(),
        );
    }
    let kind = if old.is_some() {
        EventKind::Modified
    } else {
        EventKind::Added
    };
    Ok(st.commit(&gr, new, kind))
}
