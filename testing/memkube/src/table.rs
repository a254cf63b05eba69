//! `meta.k8s.io/v1` Table responses, which `kubectl get` asks for (`Accept: ...;as=Table`).
//!
//! Columns: `Name`, the custom resource's `additionalPrinterColumns` (simple `.a.b` JSON paths),
//! and `Age`. Built-ins get only Name and Age, not their real column sets (simplification).

use serde_json::{Value, json};

use crate::resources::ResourceType;

/// Whether the Accept header asks for a Table.
pub fn wanted(accept: &str) -> bool {
    accept.contains("as=Table")
}

fn column(name: &str, ty: &str, format: &str) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": "", "priority": 0})
}

/// A Table of `objects` (already rendered at the requested version).
pub fn render(ty: &ResourceType, objects: &[Value], resource_version: u64) -> Value {
    let mut columns = vec![column("Name", "string", "name")];
    let mut custom = Vec::new();
    for c in &ty.printer_columns {
        let (Some(name), Some(path)) = (c["name"].as_str(), c["jsonPath"].as_str()) else {
            continue;
        };
        if name.eq_ignore_ascii_case("age") {
            continue;
        }
        columns.push(column(name, c["type"].as_str().unwrap_or("string"), ""));
        custom.push(path.to_string());
    }
    columns.push(column("Age", "string", ""));
    let now = jiff::Timestamp::now();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            for path in &custom {
                let mut v = o;
                for part in path.trim_start_matches('.').split('.') {
                    v = &v[part];
                }
                cells.push(v.clone());
            }
            cells.push(json!(age(o["metadata"]["creationTimestamp"].as_str(), now)));
            json!({"cells": cells, "object": o})
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version.to_string()},
        "columnDefinitions": columns, "rows": rows
    })
}

/// kubectl's short age: `12s`, `5m`, `3h`, `2d`.
fn age(created: Option<&str>, now: jiff::Timestamp) -> String {
    let Some(created) = created.and_then(|c| c.parse::<jiff::Timestamp>().ok()) else {
        return "<unknown>".into();
    };
    let secs = (now.as_second() - created.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
