//! Structural-schema checks for custom objects: defaulting, `openAPIV3Schema` validation, unknown
//! fields, and `x-kubernetes-validations` transition rules (see `rules.rs`).
//!
//! Messages copy the real server's wording (`spec.replicas: Invalid value: -1: spec.replicas in
//! body should be greater than or equal to 0`) so that tests and people see what a cluster says.
//!
//! Supported keywords: `type` (with `nullable`, `x-kubernetes-int-or-string`), `properties`,
//! `additionalProperties`, `items`, `required`, `enum`, `minimum`/`maximum` (and their
//! `exclusive*` flags), `minLength`/`maxLength`, `pattern`, `minItems`/`maxItems`, `default`,
//! `x-kubernetes-preserve-unknown-fields`. Not supported: `format`, `oneOf`/`anyOf`/`allOf`/`not`,
//! `uniqueItems`, `multipleOf`, `minProperties`/`maxProperties`.

use serde_json::{Map, Value};

use crate::error::Cause;

/// What to do with fields the schema does not declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownFields {
    /// Refuse them with a 422 (`fieldValidation=Strict`, and memkube's default).
    Refuse,
    /// Drop them silently, as the real server does with `fieldValidation=Ignore` or `Warn`.
    Prune,
}

/// Fills in `default`s of absent properties, at every depth that exists in `value`.
pub fn apply_defaults(value: &mut Value, schema: &Value) {
    match value {
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, prop) in props {
                    if !map.contains_key(name)
                        && let Some(d) = prop.get("default")
                    {
                        map.insert(name.clone(), d.clone());
                    }
                    if let Some(child) = map.get_mut(name) {
                        apply_defaults(child, prop);
                    }
                }
            } else if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object())
            {
                for child in map.values_mut() {
                    apply_defaults(child, extra);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for item in items {
                    apply_defaults(item, item_schema);
                }
            }
        }
        _ => {}
    }
}

/// Validates a whole custom object against its version's root schema; `metadata`, `apiVersion`
/// and `kind` are the server's business and are skipped. Unknown fields are pruned or reported.
pub fn validate_object(obj: &mut Value, schema: &Value, unknown: UnknownFields) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(map) = obj.as_object_mut() else {
        return causes;
    };
    let props = schema.get("properties").and_then(Value::as_object);
    let preserve = preserves_unknown(schema);
    let mut drop = Vec::new();
    for (name, value) in map.iter_mut() {
        if matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        match props.and_then(|p| p.get(name)) {
            Some(prop) => validate(value, prop, name, unknown, &mut causes),
            None if preserve => {}
            None => drop.push(name.clone()),
        }
    }
    unknown_fields(map, drop, "", unknown, &mut causes);
    required(map, schema, "", &mut causes);
    causes
}

fn preserves_unknown(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
}

fn unknown_fields(
    map: &mut Map<String, Value>,
    names: Vec<String>,
    path: &str,
    unknown: UnknownFields,
    causes: &mut Vec<Cause>,
) {
    for name in names {
        let field = join(path, &name);
        match unknown {
            UnknownFields::Prune => {
                map.remove(&name);
            }
            UnknownFields::Refuse => causes.push(Cause {
                reason: "FieldValueInvalid".into(),
                message: "field not declared in schema".into(),
                field,
            }),
        }
    }
}

fn required(map: &Map<String, Value>, schema: &Value, path: &str, causes: &mut Vec<Cause>) {
    for name in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(name) = name.as_str() else { continue };
        if !map.contains_key(name) {
            let field = join(path, name);
            causes.push(Cause {
                reason: "FieldValueRequired".into(),
                message: "Required value".into(),
                field,
            });
        }
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// How the real server prints a value in `Invalid value: ...`.
pub fn show(v: &Value) -> String {
    match v {
        Value::Number(_) => number(v),
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

/// A number as Go's `%v` prints it: whole floats without a fraction.
fn number(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if !(v.is_i64() || v.is_u64()) && f.fract() == 0.0 && f.abs() < 1e15 => {
            format!("{}", f as i64)
        }
        _ => v.to_string(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn invalid(path: &str, value: &Value, detail: String, causes: &mut Vec<Cause>) {
    causes.push(Cause {
        reason: "FieldValueInvalid".into(),
        message: format!("Invalid value: {}: {detail}", show(value)),
        field: path.to_string(),
    });
}

/// Validates `value` at `path` against one schema node, recursing into children.
pub fn validate(
    value: &mut Value,
    schema: &Value,
    path: &str,
    unknown: UnknownFields,
    causes: &mut Vec<Cause>,
) {
    if value.is_null() && schema.get("nullable").and_then(Value::as_bool) == Some(true) {
        return;
    }
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true);
    if int_or_string {
        if !(value.is_string() || type_name(value) == "integer") {
            invalid(
                path,
                value,
                format!(
                    "{path} in body must be of type integer-or-string: {}",
                    show(value)
                ),
                causes,
            );
            return;
        }
    } else if let Some(want) = schema.get("type").and_then(Value::as_str) {
        let have = type_name(value);
        let ok = have == want || (want == "number" && have == "integer");
        if !ok {
            causes.push(Cause {
                reason: "FieldValueTypeInvalid".into(),
                message: format!(
                    "Invalid value: \"{have}\": {path} in body must be of type {want}: \"{have}\""
                ),
                field: path.to_string(),
            });
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        let list: Vec<String> = options.iter().map(Value::to_string).collect();
        causes.push(Cause {
            reason: "FieldValueNotSupported".into(),
            message: format!(
                "Unsupported value: {}: supported values: {}",
                show(value),
                list.join(", ")
            ),
            field: path.to_string(),
        });
    }
    match value {
        Value::Number(n) => numeric(
            n.as_f64().unwrap_or_default(),
            value.clone(),
            schema,
            path,
            causes,
        ),
        Value::String(s) => string(&s.clone(), schema, path, causes),
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(max) = schema
                .get("maxItems")
                .and_then(Value::as_u64)
                .filter(|m| n > *m)
            {
                causes.push(Cause {
                    reason: "FieldValueTooMany".into(),
                    message: format!("Too many: {n}: must have at most {max} items"),
                    field: path.to_string(),
                });
            }
            if let Some(min) = schema
                .get("minItems")
                .and_then(Value::as_u64)
                .filter(|m| n < *m)
            {
                invalid(
                    path,
                    &Value::from(n),
                    format!("{path} in body should have at least {min} items"),
                    causes,
                );
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    validate(item, item_schema, &format!("{path}[{i}]"), unknown, causes);
                }
            }
        }
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties").filter(|a| a.is_object());
            let preserve = preserves_unknown(schema)
                || schema.get("additionalProperties") == Some(&Value::Bool(true));
            let mut drop = Vec::new();
            for (name, child) in map.iter_mut() {
                let child_path = join(path, name);
                match (props.and_then(|p| p.get(name)), extra) {
                    (Some(prop), _) => validate(child, prop, &child_path, unknown, causes),
                    (None, Some(extra)) => validate(child, extra, &child_path, unknown, causes),
                    (None, None)
                        if preserve || (props.is_none() && schema.get("type").is_none()) => {}
                    (None, None) => drop.push(name.clone()),
                }
            }
            unknown_fields(map, drop, path, unknown, causes);
            required(map, schema, path, causes);
        }
        _ => {}
    }
}

fn numeric(x: f64, value: Value, schema: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        let exclusive = schema.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true);
        if (exclusive && x <= min) || x < min {
            let op = if exclusive {
                "greater than"
            } else {
                "greater than or equal to"
            };
            invalid(
                path,
                &value,
                format!(
                    "{path} in body should be {op} {}",
                    number(&schema["minimum"])
                ),
                causes,
            );
        }
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
        let exclusive = schema.get("exclusiveMaximum").and_then(Value::as_bool) == Some(true);
        if (exclusive && x >= max) || x > max {
            let op = if exclusive {
                "less than"
            } else {
                "less than or equal to"
            };
            invalid(
                path,
                &value,
                format!(
                    "{path} in body should be {op} {}",
                    number(&schema["maximum"])
                ),
                causes,
            );
        }
    }
}

fn string(s: &str, schema: &Value, path: &str, causes: &mut Vec<Cause>) {
    let value = Value::String(s.to_string());
    let len = s.chars().count() as u64;
    if let Some(max) = schema
        .get("maxLength")
        .and_then(Value::as_u64)
        .filter(|m| len > *m)
    {
        causes.push(Cause {
            reason: "FieldValueTooLong".into(),
            message: format!("Too long: may not be more than {max} bytes"),
            field: path.to_string(),
        });
    }
    if let Some(min) = schema
        .get("minLength")
        .and_then(Value::as_u64)
        .filter(|m| len < *m)
    {
        invalid(
            path,
            &value,
            format!("{path} in body should be at least {min} chars long"),
            causes,
        );
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        match regex::Regex::new(pattern) {
            Ok(re) if !re.is_match(s) => invalid(
                path,
                &value,
                format!("{path} in body should match '{pattern}'"),
                causes,
            ),
            Ok(_) => {}
            Err(_) => tracing::warn!(
                pattern,
                "memkube cannot compile schema pattern; not checked"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {"spec": {"type": "object", "required": ["shards"], "properties": {
            "shards": {"type": "integer", "minimum": 1},
            "replicas": {"type": "integer", "minimum": 0, "maximum": 10, "default": 3},
            "mode": {"type": "string", "enum": ["a", "b"]},
            "name": {"type": "string", "maxLength": 5, "pattern": "^[a-z]+$"},
            "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
        }}}})
    }

    fn check(spec: Value) -> Vec<String> {
        let mut obj =
            json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "n"}, "spec": spec});
        apply_defaults(&mut obj, &schema());
        validate_object(&mut obj, &schema(), UnknownFields::Refuse)
            .iter()
            .map(crate::error::Cause::render)
            .collect()
    }

    #[test]
    fn messages_name_the_field_like_the_real_server() {
        assert_eq!(
            check(json!({"shards": 1, "replicas": -1})),
            vec![
                "spec.replicas: Invalid value: -1: spec.replicas in body should be greater than or equal to 0"
            ]
        );
        assert_eq!(check(json!({})), vec!["spec.shards: Required value"]);
        assert_eq!(
            check(json!({"shards": "x"})),
            vec![
                "spec.shards: Invalid value: \"string\": spec.shards in body must be of type integer: \"string\""
            ]
        );
        assert_eq!(
            check(json!({"shards": 1, "mode": "c"})),
            vec!["spec.mode: Unsupported value: \"c\": supported values: \"a\", \"b\""]
        );
        assert_eq!(
            check(json!({"shards": 1, "name": "Abcdef"})),
            vec![
                "spec.name: Too long: may not be more than 5 bytes",
                "spec.name: Invalid value: \"Abcdef\": spec.name in body should match '^[a-z]+$'"
            ]
        );
        assert_eq!(
            check(json!({"shards": 1, "typo": 1})),
            vec!["spec.typo: field not declared in schema"]
        );
    }

    #[test]
    fn defaults_fill_absent_fields_and_preserved_objects_take_anything() {
        let mut obj = json!({"spec": {"shards": 2, "extra": {"anything": {"goes": true}}}});
        apply_defaults(&mut obj, &schema());
        assert_eq!(obj["spec"]["replicas"], json!(3));
        assert!(validate_object(&mut obj, &schema(), UnknownFields::Refuse).is_empty());
    }

    #[test]
    fn pruning_drops_unknown_fields_instead_of_refusing() {
        let mut obj = json!({"spec": {"shards": 2, "typo": 1}});
        assert!(validate_object(&mut obj, &schema(), UnknownFields::Prune).is_empty());
        assert_eq!(obj, json!({"spec": {"shards": 2}}));
    }
}
