use super::*;
use kube::CustomResourceExt;
use serde_json::{Value, json};

/// The openAPIV3Schema of the only version, as JSON.
fn schema() -> Value {
    let crd = serde_json::to_value(ChatCluster::crd()).expect("crd serializes");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn spec_prop(name: &str) -> Value {
    schema()["properties"]["spec"]["properties"][name].clone()
}

#[test]
fn shards_are_immutable_through_a_cel_transition_rule() {
    let rules = &spec_prop("shards")["x-kubernetes-validations"];
    assert_eq!(
        rules,
        &json!([{"rule": "self == oldSelf", "message": "shards is immutable"}])
    );
}

#[test]
fn numeric_fields_have_bounds_in_the_schema() {
    for (field, min, max) in [
        ("replicas", 0.0, 1000.0),
        ("shards", 1.0, 65536.0),
        ("historyPerRoom", 1.0, 100_000.0),
        ("maxMessageBytes", 1.0, 1_048_576.0),
        ("replication", 1.0, 2.0),
    ] {
        let prop = spec_prop(field);
        assert_eq!(prop["minimum"].as_f64(), Some(min), "{field} minimum");
        assert_eq!(prop["maximum"].as_f64(), Some(max), "{field} maximum");
    }
    let port = &spec_prop("service")["properties"]["port"];
    assert_eq!(port["minimum"].as_f64(), Some(1.0));
    assert_eq!(port["maximum"].as_f64(), Some(65535.0));
}

#[test]
fn replicas_is_required_and_the_rest_has_defaults() {
    let spec = &schema()["properties"]["spec"];
    assert_eq!(spec["required"], json!(["replicas"]));
    assert_eq!(spec_prop("shards")["default"], json!(256));
    assert_eq!(spec_prop("handoffTimeout")["default"], json!("30s"));
    assert_eq!(spec_prop("replication")["default"], json!(2));
}

#[test]
fn the_handoff_timeout_has_a_duration_pattern() {
    assert_eq!(
        spec_prop("handoffTimeout")["pattern"],
        json!("^([0-9]+(ms|s|m|h))+$")
    );
}

#[test]
fn enums_are_closed_and_none_of_their_values_reads_as_a_yaml_boolean() {
    let mode = &spec_prop("auth")["properties"]["mode"];
    assert_eq!(mode["enum"], json!(["Disabled", "Token"]));
    let kind = &spec_prop("service")["properties"]["type"];
    assert_eq!(
        kind["enum"],
        json!(["ClusterIP", "NodePort", "LoadBalancer"])
    );
    // YAML 1.1 (kubectl) reads these unquoted as booleans; an enum value among them would
    // make `kubectl apply` of a cluster using the value fail, and serde_yaml does not quote
    // them in the generated CRD either.
    let yaml11_bools = ["y", "yes", "n", "no", "on", "off", "true", "false"];
    let mut strings = Vec::new();
    enum_strings(&schema(), &mut strings);
    assert!(strings.contains(&"Token".to_owned()));
    for value in strings {
        assert!(
            !yaml11_bools.contains(&value.to_ascii_lowercase().as_str()),
            "enum value {value:?} reads as a YAML 1.1 boolean"
        );
    }
}

/// Every string in an `enum` anywhere in `schema`.
fn enum_strings(schema: &Value, out: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            for (key, value) in map {
                if key == "enum" {
                    out.extend(
                        value
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|v| v.as_str().map(str::to_owned)),
                    );
                }
                enum_strings(value, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| enum_strings(v, out)),
        _ => {}
    }
}

#[test]
fn printer_columns_and_short_name_are_declared() {
    let crd = ChatCluster::crd();
    assert_eq!(crd.spec.names.short_names, Some(vec!["chat".to_owned()]));
    let columns: Vec<String> = crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(
        columns,
        [
            "Replicas", "Ready", "Updated", "Shards", "Epoch", "Phase", "Age"
        ]
    );
    let subresources = crd.spec.versions[0].subresources.as_ref();
    assert!(subresources.is_some_and(|s| s.status.is_some()));
}

#[test]
fn the_scale_subresource_maps_replicas_and_the_pod_selector() {
    let crd = ChatCluster::crd();
    let scale = crd.spec.versions[0]
        .subresources
        .as_ref()
        .and_then(|s| s.scale.clone())
        .expect("scale subresource");
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.status_replicas_path, ".status.replicas");
    assert_eq!(
        scale.label_selector_path.as_deref(),
        Some(".status.selector")
    );
}

#[test]
fn autoscaling_bounds_and_targets_are_checked_by_the_api_server() {
    let autoscaling = spec_prop("autoscaling");
    assert_eq!(
        autoscaling["x-kubernetes-validations"][0]["rule"],
        json!("self.minReplicas <= self.maxReplicas")
    );
    assert_eq!(
        autoscaling["x-kubernetes-validations"][0]["fieldPath"],
        json!(".maxReplicas")
    );
    for field in ["minReplicas", "maxReplicas", "maxStep"] {
        assert_eq!(
            autoscaling["properties"][field]["minimum"].as_f64(),
            Some(1.0),
            "{field}"
        );
    }
    let targets = &autoscaling["properties"]["targets"];
    for field in ["connectionsPerPod", "deliveriesPerSecPerPod"] {
        assert_eq!(targets["properties"][field]["minimum"].as_f64(), Some(1.0));
    }
    assert_eq!(
        targets["x-kubernetes-validations"][0]["rule"],
        json!("has(self.connectionsPerPod) || has(self.deliveriesPerSecPerPod)")
    );
    assert_eq!(
        autoscaling["properties"]["scaleDownStabilization"]["default"],
        json!("5m")
    );
}

#[test]
fn a_minimal_spec_gets_every_default() {
    let spec: ChatClusterSpec =
        serde_json::from_value(json!({"replicas": 3})).expect("minimal spec");
    assert_eq!(spec.replicas, 3);
    assert_eq!(spec.shards, 256);
    assert_eq!(spec.history_per_room, 100);
    assert_eq!(spec.max_message_bytes, 16 * 1024);
    assert_eq!(spec.handoff_timeout, "30s");
    assert_eq!(spec.replication, 2);
    assert_eq!(spec.service, ServiceSpec::default());
    assert_eq!(spec.service.port, 80);
    assert_eq!(spec.service.type_, ServiceType::ClusterIP);
    assert_eq!(spec.auth.mode, AuthMode::Disabled);
    assert!(spec.ingress.is_none());
    assert!(spec.image.starts_with("ghcr.io/roomshard/roomshard-node:"));
}

#[test]
fn unknown_spec_fields_are_refused_when_deserializing() {
    let err = serde_json::from_value::<ChatClusterSpec>(json!({"replicas": 1, "replica": 2}))
        .expect_err("unknown field");
    assert!(err.to_string().contains("unknown field `replica`"));
}
