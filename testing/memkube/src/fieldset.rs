//! Field sets: which fields of an object a manager owns, in the `FieldsV1` path language that
//! `metadata.managedFields` uses (`f:spec` → `f:replicas`; `k:{"name":"app"}` for an item of a
//! keyed list, with `.` for the item itself).
//!
//! A set is stored flat, as the set of paths to the leaves a manager set: scalars, atomic lists,
//! empty maps, and `.` markers for keyed-list items. Converting to and from the nested `FieldsV1`
//! JSON is lossless for sets this module builds.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::merge::{child_schema, item_key, items_schema, list_keys};

/// One path element: `f:<field>`, `k:<json key>` or `.`.
pub type Path = Vec<String>;

/// A set of owned leaf paths.
pub type FieldSet = BTreeSet<Path>;

/// Which part of an object a write concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The main resource: everything but `status` when the type has a status subresource.
    Main {
        /// Whether `status` belongs to a subresource and so is not part of this scope.
        exclude_status: bool,
    },
    /// The `/status` subresource: only `status`.
    Status,
}

/// The metadata fields a manager can own; the rest belong to the server.
const OWNED_METADATA: [&str; 4] = ["labels", "annotations", "finalizers", "ownerReferences"];

/// The part of `obj` that `scope` covers, with server-owned metadata left out.
pub fn scoped(obj: &Value, scope: Scope) -> Value {
    let mut out = Map::new();
    let Some(map) = obj.as_object() else {
        return Value::Object(out);
    };
    for (k, v) in map {
        let keep = match (scope, k.as_str()) {
            (_, "apiVersion" | "kind") => false,
            (Scope::Status, key) => key == "status",
            (Scope::Main { exclude_status }, "status") => !exclude_status,
            (Scope::Main { .. }, _) => true,
        };
        if !keep {
            continue;
        }
        if k == "metadata" {
            let meta: Map<String, Value> = v
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(mk, _)| OWNED_METADATA.contains(&mk.as_str()))
                .map(|(mk, mv)| (mk.clone(), mv.clone()))
                .collect();
            if !meta.is_empty() {
                out.insert(k.clone(), Value::Object(meta));
            }
        } else {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

/// The leaf paths of `obj` within `scope`; `schema` is the custom resource's root schema, if any.
pub fn fields_of(obj: &Value, scope: Scope, schema: Option<&Value>) -> FieldSet {
    let mut out = FieldSet::new();
    if let Some(map) = scoped(obj, scope).as_object() {
        for (k, v) in map {
            walk(
                v,
                child_schema(schema, k),
                k,
                vec![format!("f:{k}")],
                &mut out,
            );
        }
    }
    out
}

fn walk(v: &Value, schema: Option<&Value>, field: &str, prefix: Path, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                let mut p = prefix.clone();
                p.push(format!("f:{k}"));
                walk(child, child_schema(schema, k), k, p, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let keyed = list_keys(field, schema).and_then(|keys| {
                items
                    .iter()
                    .map(|i| item_key(i, &keys))
                    .collect::<Option<Vec<_>>>()
            });
            match keyed {
                Some(keys) => {
                    for (item, key) in items.iter().zip(keys) {
                        let mut p = prefix.clone();
                        p.push(format!("k:{}", Value::Object(key)));
                        let mut dot = p.clone();
                        dot.push(".".into());
                        out.insert(dot);
                        if let Some(m) = item.as_object() {
                            for (k, child) in m {
                                let mut cp = p.clone();
                                cp.push(format!("f:{k}"));
                                walk(child, child_schema(items_schema(schema), k), k, cp, out);
                            }
                        }
                    }
                }
                None => {
                    out.insert(prefix);
                }
            }
        }
        _ => {
            out.insert(prefix);
        }
    }
}

fn key_matches(item: &Value, key: &Map<String, Value>) -> bool {
    key.iter().all(|(k, v)| item.get(k) == Some(v))
}

fn parse_key(pe: &str) -> Option<Map<String, Value>> {
    serde_json::from_str::<Value>(pe.strip_prefix("k:")?)
        .ok()?
        .as_object()
        .cloned()
}

/// The value at a path, if present.
pub fn value_at<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for pe in path {
        if let Some(f) = pe.strip_prefix("f:") {
            cur = cur.get(f)?;
        } else if pe.starts_with("k:") {
            let key = parse_key(pe)?;
            cur = cur.as_array()?.iter().find(|i| key_matches(i, &key))?;
        }
    }
    Some(cur)
}

/// Removes the field (or, for a path ending in `.`, the list item) at `path`; then removes maps
/// that the removal left empty, below the top level.
pub fn remove_at(v: &mut Value, path: &[String]) {
    let (target, parent_path) = match path.split_last() {
        Some((last, rest)) if last == "." => match rest.split_last() {
            Some((item, parent)) => (item, parent),
            None => return,
        },
        Some((last, rest)) => (last, rest),
        None => return,
    };
    if let Some(parent) = value_at_mut(v, parent_path) {
        if let Some(f) = target.strip_prefix("f:") {
            if let Some(m) = parent.as_object_mut() {
                m.remove(f);
            }
        } else if let (Some(key), Some(list)) = (parse_key(target), parent.as_array_mut()) {
            list.retain(|i| !key_matches(i, &key));
        }
    }
    for depth in (2..=parent_path.len()).rev() {
        let prefix = &parent_path[..depth];
        let empty = value_at(v, prefix).is_some_and(|x| x.as_object().is_some_and(Map::is_empty));
        if !empty {
            continue;
        }
        if let (Some(parent), Some(f)) = (
            value_at_mut(v, &prefix[..depth - 1]),
            prefix[depth - 1].strip_prefix("f:"),
        ) && let Some(m) = parent.as_object_mut()
        {
            m.remove(f);
        }
    }
}

fn value_at_mut<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = v;
    for pe in path {
        if let Some(f) = pe.strip_prefix("f:") {
            cur = cur.get_mut(f)?;
        } else if pe.starts_with("k:") {
            let key = parse_key(pe)?;
            cur = cur
                .as_array_mut()?
                .iter_mut()
                .find(|i| key_matches(i, &key))?;
        }
    }
    Some(cur)
}

/// The nested `fieldsV1` JSON of a set.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for pe in path {
            let entry = node
                .entry(pe.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(next) = entry else { break };
            node = next;
        }
    }
    Value::Object(root)
}

/// The set a `fieldsV1` JSON describes.
pub fn from_fields_v1(v: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    fn rec(v: &Value, prefix: &mut Path, out: &mut FieldSet) {
        match v.as_object() {
            Some(m) if !m.is_empty() => {
                for (k, child) in m {
                    prefix.push(k.clone());
                    rec(child, prefix, out);
                    prefix.pop();
                }
            }
            _ => {
                if !prefix.is_empty() {
                    out.insert(prefix.clone());
                }
            }
        }
    }
    rec(v, &mut Vec::new(), &mut out);
    out
}

/// A path as the real server prints it in conflicts: `.spec.containers[name="app"].image`.
pub fn display(path: &[String]) -> String {
    let mut s = String::new();
    for pe in path {
        if let Some(f) = pe.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(key) = parse_key(pe) {
            let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("[{}]", parts.join(",")));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keyed_lists_become_k_paths_and_round_trip_through_fields_v1() {
        let obj = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "1"}},
            "spec": {"containers": [{"name": "app", "image": "x", "args": ["1"]}]}, "status": {"phase": "Running"}});
        let set = fields_of(
            &obj,
            Scope::Main {
                exclude_status: true,
            },
            None,
        );
        let fields = to_fields_v1(&set);
        assert_eq!(
            fields,
            json!({"f:metadata": {"f:labels": {"f:a": {}}}, "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {
                ".": {}, "f:args": {}, "f:image": {}, "f:name": {}}}}})
        );
        assert_eq!(from_fields_v1(&fields), set);
    }

    #[test]
    fn removing_a_keyed_item_and_the_last_label_leaves_no_empty_maps() {
        let mut obj = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        remove_at(
            &mut obj,
            &[
                "f:spec".into(),
                "f:containers".into(),
                "k:{\"name\":\"a\"}".into(),
                ".".into(),
            ],
        );
        remove_at(
            &mut obj,
            &["f:metadata".into(), "f:labels".into(), "f:a".into()],
        );
        assert_eq!(
            obj,
            json!({"metadata": {}, "spec": {"containers": [{"name": "b"}]}})
        );
    }
}
