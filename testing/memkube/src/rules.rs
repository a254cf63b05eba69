//! `x-kubernetes-validations` (CEL) rules, reduced to what operators use for immutability.
//!
//! Supported: transition rules comparing the whole value with its old value, `self OP oldSelf` or
//! `oldSelf OP self` with OP one of `==`, `!=`, `<`, `<=`, `>`, `>=` (numbers and strings order;
//! other values only compare for equality). They run on update where both the old and the new
//! object have the field, at object-property paths (not inside lists), as the real server does
//! for properties. Any other rule is accepted without evaluation (a debug log says so).
//!
//! A failing rule gives `<path>: Invalid value: "<type>": <message>`, the real server's wording.

use std::cmp::Ordering;

use serde_json::Value;

use crate::error::Cause;

/// Checks every supported transition rule of `schema` and its properties against `new` and `old`.
pub fn check_transitions(
    new: &Value,
    old: &Value,
    schema: &Value,
    path: &str,
    causes: &mut Vec<Cause>,
) {
    for rule in schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(text) = rule.get("rule").and_then(Value::as_str) else {
            continue;
        };
        match evaluate(text, new, old) {
            Some(true) => {}
            Some(false) => {
                let message = rule
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("failed rule: {text}"));
                let ty = schema
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("object");
                let field = rule
                    .get("fieldPath")
                    .and_then(Value::as_str)
                    .map(|f| format!("{path}{f}"))
                    .unwrap_or_else(|| path.to_string());
                causes.push(Cause {
                    reason: "FieldValueInvalid".into(),
                    message: format!("Invalid value: \"{ty}\": {message}"),
                    field,
                });
            }
            None => tracing::debug!(
                rule = text,
                "memkube does not evaluate this CEL rule; accepted"
            ),
        }
    }
    let (Some(props), Some(new_map), Some(old_map)) = (
        schema.get("properties").and_then(Value::as_object),
        new.as_object(),
        old.as_object(),
    ) else {
        return;
    };
    for (name, prop) in props {
        if let (Some(n), Some(o)) = (new_map.get(name), old_map.get(name)) {
            let child = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            check_transitions(n, o, prop, &child, causes);
        }
    }
}

/// Evaluates a supported rule; `None` when the rule is outside the supported subset.
fn evaluate(rule: &str, new: &Value, old: &Value) -> Option<bool> {
    let compact: String = rule.chars().filter(|c| !c.is_whitespace()).collect();
    for op in ["==", "!=", "<=", ">=", "<", ">"] {
        let Some((lhs, rhs)) = compact.split_once(op) else {
            continue;
        };
        let (a, b) = match (lhs, rhs) {
            ("self", "oldSelf") => (new, old),
            ("oldSelf", "self") => (old, new),
            _ => return None,
        };
        return match op {
            "==" => Some(a == b),
            "!=" => Some(a != b),
            _ => {
                let ord = order(a, b)?;
                Some(match op {
                    "<=" => ord != Ordering::Greater,
                    ">=" => ord != Ordering::Less,
                    "<" => ord == Ordering::Less,
                    _ => ord == Ordering::Greater,
                })
            }
        };
    }
    None
}

fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "shards": {"type": "integer", "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "shards is immutable"}]},
            "replicas": {"type": "integer", "x-kubernetes-validations": [{"rule": "self >= oldSelf", "message": "replicas may only grow"}]},
            "other": {"type": "string", "x-kubernetes-validations": [{"rule": "self.startsWith('a')"}]}
        }}}})
    }

    fn run(new: Value, old: Value) -> Vec<String> {
        let mut causes = Vec::new();
        check_transitions(&new, &old, &schema(), "", &mut causes);
        causes.iter().map(crate::error::Cause::render).collect()
    }

    #[test]
    fn changing_an_immutable_field_names_it_with_the_rule_message() {
        assert_eq!(
            run(
                json!({"spec": {"shards": 8}}),
                json!({"spec": {"shards": 4}})
            ),
            vec!["spec.shards: Invalid value: \"integer\": shards is immutable"]
        );
        assert!(
            run(
                json!({"spec": {"shards": 4}}),
                json!({"spec": {"shards": 4}})
            )
            .is_empty()
        );
    }

    #[test]
    fn ordering_rules_compare_and_unsupported_rules_are_accepted() {
        assert_eq!(
            run(
                json!({"spec": {"replicas": 1}}),
                json!({"spec": {"replicas": 2}})
            )
            .len(),
            1
        );
        assert!(
            run(
                json!({"spec": {"replicas": 3, "other": "zzz"}}),
                json!({"spec": {"replicas": 2, "other": "b"}})
            )
            .is_empty()
        );
    }
}
