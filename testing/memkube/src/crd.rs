//! CustomResourceDefinition objects themselves: the checks a CRD must pass before its resource is
//! served, and the status (NamesAccepted, Established) the real server sets once it serves it.
//! Serving follows from storing: the store re-derives its types from the stored CRDs.

use serde_json::{Value, json};

use crate::error::{ApiError, Cause};
use crate::ops::now;

/// The checks a CRD must pass before its resource can be served.
pub(crate) fn check(crd: &Value) -> Result<(), ApiError> {
    let spec = &crd["spec"];
    let name = crd["metadata"]["name"].as_str().unwrap_or_default();
    let mut causes = Vec::new();
    for (field, value) in [
        ("spec.group", &spec["group"]),
        ("spec.names.plural", &spec["names"]["plural"]),
        ("spec.names.kind", &spec["names"]["kind"]),
    ] {
        if value.as_str().is_none_or(str::is_empty) {
            causes.push(Cause {
                reason: "FieldValueRequired".into(),
                message: "Required value".into(),
                field: field.into(),
            });
        }
    }
    let expected = format!(
        "{}.{}",
        spec["names"]["plural"].as_str().unwrap_or_default(),
        spec["group"].as_str().unwrap_or_default()
    );
    if causes.is_empty() && name != expected {
        causes.push(Cause {
            reason: "FieldValueInvalid".into(),
            message: format!(
                "Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"
            ),
            field: "metadata.name".into(),
        });
    }
    let versions = spec["versions"]
        .as_array()
        .map(Vec::len)
        .unwrap_or_default();
    if versions == 0 {
        causes.push(Cause {
            reason: "FieldValueRequired".into(),
            message: "Required value".into(),
            field: "spec.versions".into(),
        });
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "CustomResourceDefinition",
            "apiextensions.k8s.io",
            name,
            causes,
        ))
    }
}

/// A CRD is accepted and established as soon as it is stored; an unchanged one keeps its status.
pub(crate) fn establish(crd: &mut Value, old: Option<&Value>) {
    if let Some(old) = old
        && old["status"]["acceptedNames"] == crd["spec"]["names"]
    {
        crd["status"] = old["status"].clone();
        return;
    }
    let names = crd["spec"]["names"].clone();
    let stored: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .map(|v| v["name"].clone())
        .collect();
    let now = now();
    crd["status"] = json!({
        "acceptedNames": names,
        "storedVersions": stored,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now}
        ]
    });
}
