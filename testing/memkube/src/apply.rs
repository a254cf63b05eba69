//! Server-side apply and field ownership (`metadata.managedFields`).
//!
//! Every write records who set which fields. A plain write (create, update, patch) gives its
//! manager, with operation `Update`, every field it changed and takes those fields from everyone
//! else; fields it removed leave every set. An apply (operation `Apply`):
//! 1. refuses with 409 Conflict when it sets a field that another manager owns to a different
//!    value, unless `force=true`, which moves the field to the applier;
//! 2. merges the applied configuration into the live object (maps by key, keyed lists by item key,
//!    everything else replaced);
//! 3. removes fields the same manager applied before and omits now, unless someone else owns them;
//! 4. replaces the manager's set with exactly what it applied.
//!
//! Simplified from the real structured-merge-diff: ownership is per leaf (a manager owning a
//! parent map does not conflict with one owning a child); list semantics come from `merge.rs`.

use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::fieldset::{
    FieldSet, Path, Scope, display, fields_of, from_fields_v1, remove_at, scoped, to_fields_v1,
    value_at,
};
use crate::merge::{child_schema, item_key, items_schema, list_keys};

/// One `managedFields` entry.
#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: Option<String>,
    set: FieldSet,
}

impl Entry {
    fn is(&self, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.as_deref() == subresource
    }
}

fn read_entries(obj: &Value) -> Vec<Entry> {
    let Some(list) = obj["metadata"]["managedFields"].as_array() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|e| {
            Some(Entry {
                manager: e.get("manager")?.as_str()?.to_string(),
                operation: e.get("operation")?.as_str()?.to_string(),
                api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
                time: e["time"].as_str().unwrap_or_default().to_string(),
                subresource: e
                    .get("subresource")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                set: from_fields_v1(e.get("fieldsV1").unwrap_or(&Value::Null)),
            })
        })
        .collect()
}

fn write_entries(obj: &mut Value, entries: Vec<Entry>) {
    let list: Vec<Value> = entries
        .into_iter()
        .filter(|e| !e.set.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&e.set),
            });
            if let Some(sub) = e.subresource {
                v["subresource"] = json!(sub);
            }
            v
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Who is writing, and where.
#[derive(Debug, Clone)]
pub struct Writer<'a> {
    /// The field manager.
    pub manager: &'a str,
    /// The apiVersion the request used.
    pub api_version: &'a str,
    /// Main resource or status subresource.
    pub scope: Scope,
    /// The custom resource's root schema, for keyed lists.
    pub schema: Option<&'a Value>,
    /// Now, as an RFC 3339 timestamp.
    pub now: &'a str,
}

impl Writer<'_> {
    fn subresource(&self) -> Option<&'static str> {
        (self.scope == Scope::Status).then_some("status")
    }
}

/// Records the ownership changes of a plain write from `old` to `new` (in place on `new`).
pub fn track_update(old: Option<&Value>, new: &mut Value, w: &Writer<'_>) {
    let mut entries = old.map(read_entries).unwrap_or_default();
    let old_fields = old
        .map(|o| fields_of(o, w.scope, w.schema))
        .unwrap_or_default();
    let new_fields = fields_of(new, w.scope, w.schema);
    let changed: FieldSet = new_fields
        .iter()
        .filter(|p| match old {
            None => true,
            Some(_) if p.last().is_some_and(|l| l == ".") => !old_fields.contains(*p),
            Some(o) => value_at(o, p) != value_at(new, p),
        })
        .cloned()
        .collect();
    let removed: Vec<&Path> = old_fields.difference(&new_fields).collect();
    for e in &mut entries {
        for p in changed.iter().chain(removed.iter().copied()) {
            e.set.remove(p);
        }
    }
    if !changed.is_empty() {
        match entries
            .iter_mut()
            .find(|e| e.is(w.manager, "Update", w.subresource()))
        {
            Some(e) => {
                e.set.extend(changed);
                e.time = w.now.to_string();
                e.api_version = w.api_version.to_string();
            }
            None => entries.push(Entry {
                manager: w.manager.to_string(),
                operation: "Update".into(),
                api_version: w.api_version.to_string(),
                time: w.now.to_string(),
                subresource: w.subresource().map(str::to_string),
                set: changed,
            }),
        }
    }
    write_entries(new, entries);
}

/// Applies `applied` (already parsed from YAML) onto `live` (or onto `base` when creating).
///
/// # Errors
/// 409 Conflict listing each field another manager owns with a different value, unless `force`.
pub fn apply(
    live: &Value,
    applied: &Value,
    force: bool,
    w: &Writer<'_>,
) -> Result<Value, ApiError> {
    let applied = scoped(applied, w.scope);
    let new_set = fields_of(
        &applied,
        Scope::Main {
            exclude_status: false,
        },
        w.schema,
    );
    let mut entries = read_entries(live);
    let sub = w.subresource();

    let mut conflicts = Vec::new();
    for e in entries.iter_mut().filter(|e| e.manager != w.manager) {
        let owned: Vec<Path> = e
            .set
            .intersection(&new_set)
            .filter(|p| p.last().is_some_and(|l| l != "."))
            .cloned()
            .collect();
        for p in owned {
            if value_at(live, &p) == value_at(&applied, &p) {
                continue;
            }
            if force {
                e.set.remove(&p);
            } else {
                conflicts.push((e.manager.clone(), display(&p)));
            }
        }
    }
    if !conflicts.is_empty() {
        conflicts.sort();
        conflicts.dedup();
        return Err(ApiError::apply_conflict(&conflicts));
    }

    let mut result = live.clone();
    merge_applied(&mut result, &applied, w.schema, "");

    let previous = entries
        .iter()
        .find(|e| e.is(w.manager, "Apply", sub))
        .map(|e| e.set.clone())
        .unwrap_or_default();
    let others: Vec<&FieldSet> = entries
        .iter()
        .filter(|e| !e.is(w.manager, "Apply", sub))
        .map(|e| &e.set)
        .collect();
    let mut dropped: Vec<&Path> = previous.difference(&new_set).collect();
    dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in dropped {
        let subject: &[String] = if p.last().is_some_and(|l| l == ".") {
            &p[..p.len() - 1]
        } else {
            p
        };
        let still_wanted = new_set.iter().any(|q| q.starts_with(subject))
            || others
                .iter()
                .any(|s| s.iter().any(|q| q.starts_with(subject)));
        if !still_wanted {
            remove_at(&mut result, p);
        }
    }

    entries.retain(|e| !e.is(w.manager, "Apply", sub));
    entries.push(Entry {
        manager: w.manager.to_string(),
        operation: "Apply".into(),
        api_version: w.api_version.to_string(),
        time: w.now.to_string(),
        subresource: sub.map(str::to_string),
        set: new_set,
    });
    write_entries(&mut result, entries);
    Ok(result)
}

/// Merges an applied configuration into `target`: maps by key, keyed lists by item, rest replaced.
fn merge_applied(target: &mut Value, applied: &Value, schema: Option<&Value>, field: &str) {
    match applied {
        Value::Object(src) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let Some(dst) = target.as_object_mut() else {
                return;
            };
            for (k, v) in src {
                if v.is_null() {
                    dst.remove(k);
                    continue;
                }
                let slot = dst.entry(k.clone()).or_insert(Value::Null);
                merge_applied(slot, v, child_schema(schema, k), k);
            }
        }
        Value::Array(items) => {
            let keys = list_keys(field, schema);
            let (Some(keys), Some(existing)) = (keys, target.as_array_mut()) else {
                *target = applied.clone();
                return;
            };
            for item in items {
                let key = item_key(item, &keys);
                let pos = key.as_ref().and_then(|k| {
                    existing
                        .iter()
                        .position(|x| item_key(x, &keys).as_ref() == Some(k))
                });
                match pos {
                    Some(i) => merge_applied(&mut existing[i], item, items_schema(schema), ""),
                    None => existing.push(item.clone()),
                }
            }
        }
        other => *target = other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            api_version: "v1",
            scope: Scope::Main {
                exclude_status: false,
            },
            schema: None,
            now: "t",
        }
    }

    fn cm(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data})
    }

    #[test]
    fn a_manager_that_stops_applying_a_field_removes_it() -> Result<(), ApiError> {
        let base = cm(json!(null));
        let first = apply(&base, &cm(json!({"a": "1", "b": "2"})), false, &writer("m"))?;
        let second = apply(&first, &cm(json!({"a": "1"})), false, &writer("m"))?;
        assert_eq!(second["data"], json!({"a": "1"}));
        Ok(())
    }

    #[test]
    fn a_different_value_owned_by_another_manager_conflicts_unless_forced() -> Result<(), ApiError>
    {
        let first = apply(
            &cm(json!(null)),
            &cm(json!({"a": "1"})),
            false,
            &writer("one"),
        )?;
        let err = apply(&first, &cm(json!({"a": "2"})), false, &writer("two")).err();
        assert_eq!(err.as_ref().map(|e| e.code), Some(409));
        assert!(
            err.map(|e| e.message)
                .unwrap_or_default()
                .contains("conflict with \"one\": .data.a")
        );
        let same = apply(&first, &cm(json!({"a": "1"})), false, &writer("two"));
        assert!(
            same.is_ok(),
            "the same value is shared ownership, not a conflict"
        );
        let forced = apply(&first, &cm(json!({"a": "2"})), true, &writer("two"))?;
        assert_eq!(forced["data"]["a"], json!("2"));
        let owners: Vec<&str> = forced["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["manager"].as_str())
            .collect();
        assert_eq!(owners, vec!["two"]);
        Ok(())
    }

    #[test]
    fn a_plain_update_takes_the_fields_it_changes() -> Result<(), ApiError> {
        let first = apply(
            &cm(json!(null)),
            &cm(json!({"a": "1"})),
            false,
            &writer("applier"),
        )?;
        let mut edited = first.clone();
        edited["data"]["a"] = json!("edited");
        track_update(Some(&first), &mut edited, &writer("editor"));
        let err = apply(&edited, &cm(json!({"a": "1"})), false, &writer("applier")).err();
        assert_eq!(err.map(|e| e.code), Some(409));
        Ok(())
    }
}
