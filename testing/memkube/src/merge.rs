//! Which lists merge by key, and the three patch formats that are not server-side apply.
//!
//! Kubernetes merges some lists item by item (containers by `name`, conditions by `type`, ...) and
//! replaces the others whole. Built-in types carry that knowledge in Go struct tags; here it is a
//! table of well-known field names ([`builtin_list_keys`]). Custom resources declare it in their
//! schema with `x-kubernetes-list-type: map` and `x-kubernetes-list-map-keys`, which is honoured.
//!
//! Simplifications, on purpose:
//! - the built-in table goes by field name alone, not by the enclosing type; `ports` items are keyed
//!   by `containerPort` or `port` (whichever the item has), without `protocol`;
//! - primitive lists with set semantics (`finalizers`, `args`) are atomic;
//! - strategic merge patch is merge patch plus keyed-list merging, `$patch: delete|replace` and
//!   `$deleteFromPrimitiveList`; `$setElementOrder` and `$retainKeys` are accepted and ignored.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// Merge keys for a built-in list field, by its field name.
pub fn builtin_list_keys(field: &str) -> Option<&'static [&'static str]> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "volumeDevices"
        | "hostAliases" => &["name"],
        "volumeMounts" => &["mountPath"],
        "ports" => &["containerPort", "port"],
        "conditions" => &["type"],
        "ownerReferences" => &["uid"],
        _ => return None,
    })
}

/// Merge keys for the list at `field`, whose schema node (for custom resources) is `schema`.
pub fn list_keys(field: &str, schema: Option<&Value>) -> Option<Vec<String>> {
    if let Some(s) = schema {
        if s.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map") {
            let keys = s["x-kubernetes-list-map-keys"].as_array()?;
            return Some(
                keys.iter()
                    .filter_map(|k| k.as_str().map(str::to_string))
                    .collect(),
            );
        }
        if s.get("x-kubernetes-list-type").is_some() {
            return None;
        }
    }
    builtin_list_keys(field).map(|keys| keys.iter().map(|k| k.to_string()).collect())
}

/// The schema node of `field` under an object schema node.
pub fn child_schema<'a>(schema: Option<&'a Value>, field: &str) -> Option<&'a Value> {
    let s = schema?;
    s.get("properties")
        .and_then(|p| p.get(field))
        .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
}

/// The schema node of a list's items.
pub fn items_schema(schema: Option<&Value>) -> Option<&Value> {
    schema?.get("items")
}

/// The key of one list item: the values of those merge keys the item has, in key order.
pub fn item_key(item: &Value, keys: &[String]) -> Option<Map<String, Value>> {
    let obj = item.as_object()?;
    let key: Map<String, Value> = keys
        .iter()
        .filter_map(|k| obj.get(k).map(|v| (k.clone(), v.clone())))
        .collect();
    (!key.is_empty()).then_some(key)
}

/// JSON merge patch (RFC 7386).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// JSON patch (RFC 6902).
///
/// # Errors
/// A 422 when an operation fails (a `test` that does not hold, a missing path), as the real server.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    json_patch::patch(target, &ops.0).map_err(|e| {
        let mut err = ApiError::bad_request(format!(
            "the server rejected our request due to an error in our request: {e}"
        ));
        err.code = 422;
        err.reason = "Invalid";
        err
    })
}

/// Strategic merge patch, approximated (see the module docs).
pub fn strategic_merge_patch(target: &mut Value, patch: &Value, schema: Option<&Value>) {
    let Some(patch_map) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = strip_directives(patch);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    for (k, v) in patch_map {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = v.as_array().cloned().unwrap_or_default();
            if let Some(list) = target.get_mut(field).and_then(Value::as_array_mut) {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        let Some(target_map) = target.as_object_mut() else {
            return;
        };
        let child = child_schema(schema, k);
        match v {
            Value::Null => {
                target_map.remove(k);
            }
            Value::Object(_) => {
                let slot = target_map.entry(k.clone()).or_insert(Value::Null);
                strategic_merge_patch(slot, v, child);
            }
            Value::Array(items) => match list_keys(k, child) {
                Some(keys) => {
                    let slot = target_map
                        .entry(k.clone())
                        .or_insert_with(|| Value::Array(Vec::new()));
                    merge_keyed_list(slot, items, &keys, items_schema(child));
                }
                None => {
                    target_map.insert(k.clone(), strip_directives(v));
                }
            },
            _ => {
                target_map.insert(k.clone(), v.clone());
            }
        }
    }
}

fn merge_keyed_list(
    target: &mut Value,
    items: &[Value],
    keys: &[String],
    item_schema: Option<&Value>,
) {
    if !target.is_array() {
        *target = Value::Array(Vec::new());
    }
    let Some(list) = target.as_array_mut() else {
        return;
    };
    for item in items {
        let key = item_key(item, keys);
        let pos = key.as_ref().and_then(|k| {
            list.iter()
                .position(|x| item_key(x, keys).as_ref() == Some(k))
        });
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                list.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge_patch(&mut list[i], item, item_schema),
            (None, false) => list.push(strip_directives(item)),
        }
    }
}

/// A copy of `v` without `$`-prefixed directive keys, at any depth.
fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_merges_containers_by_name_and_replaces_args() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "args": ["x"]},
            {"name": "b", "image": "b:1"}
        ]}});
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "a", "image": "a:2", "args": ["y"]}, {"name": "b", "$patch": "delete"}]
        }});
        strategic_merge_patch(&mut pod, &patch, None);
        assert_eq!(
            pod,
            json!({"spec": {"containers": [{"name": "a", "image": "a:2", "args": ["y"]}]}})
        );
    }

    #[test]
    fn custom_schemas_declare_keyed_lists() {
        let schema = json!({"properties": {"nodes": {"type": "array", "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["id"], "items": {"type": "object"}}}});
        let mut obj = json!({"nodes": [{"id": 1, "a": 1}, {"id": 2}]});
        strategic_merge_patch(
            &mut obj,
            &json!({"nodes": [{"id": 1, "b": 2}]}),
            Some(&schema),
        );
        assert_eq!(
            obj,
            json!({"nodes": [{"id": 1, "a": 1, "b": 2}, {"id": 2}]})
        );
    }

    #[test]
    fn a_failing_json_patch_test_is_invalid() {
        let mut obj = json!({"a": 1});
        let err = json_patch(&mut obj, &json!([{"op": "test", "path": "/a", "value": 2}])).err();
        assert_eq!(err.map(|e| e.code), Some(422));
    }
}
