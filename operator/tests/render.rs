//! `roomshard-operator render` against the real control plane: for every file in `examples/`,
//! what it prints is what the controller's first pass writes. The deploy checks scan the
//! rendered children with a policy checker (tests/deploy/test_policy_scan.py), so this is what
//! makes that scan a scan of what really gets deployed.

mod support;

use std::path::{Path, PathBuf};

use kube::ResourceExt;
use operator::k8s::render;
use serde::Deserialize;
use serde_json::Value;
use support::{Harness, NS, TestResult, children};

/// The resource (as [`Harness::object`] takes it) of a rendered object's `kind`.
fn resource(kind: &str) -> TestResult<&'static str> {
    Ok(match kind {
        "StatefulSet" => "statefulsets.apps",
        "Service" => "services",
        "ConfigMap" => "configmaps",
        "Secret" => "secrets",
        "PodDisruptionBudget" => "poddisruptionbudgets.policy",
        "ServiceAccount" => "serviceaccounts",
        "Role" => "roles.rbac.authorization.k8s.io",
        "RoleBinding" => "rolebindings.rbac.authorization.k8s.io",
        "Ingress" => "ingresses.networking.k8s.io",
        other => return Err(format!("render printed an unexpected kind {other:?}").into()),
    })
}

/// The manifests in `examples/`, sorted.
fn examples() -> TestResult<Vec<PathBuf>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Asserts every field of `part` is in `whole` with the same value: the API server adds its
/// defaults (a Service's clusterIP, a container's terminationMessagePath) and never removes
/// what was applied, so anything render printed and the first pass did not write, or wrote
/// differently, fails here.
fn assert_contains(whole: &Value, part: &Value, at: &str) {
    match (whole, part) {
        (Value::Object(w), Value::Object(p)) => {
            for (key, value) in p {
                assert_contains(&w[key], value, &format!("{at}.{key}"));
            }
        }
        (Value::Array(w), Value::Array(p)) => {
            assert_eq!(w.len(), p.len(), "{at}: {whole} vs {part}");
            for (i, (w, p)) in w.iter().zip(p).enumerate() {
                assert_contains(w, p, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(whole, part, "{at}"),
    }
}

#[tokio::test]
async fn render_prints_exactly_the_children_a_first_pass_writes_for_every_example() -> TestResult {
    let h = Harness::start().await?;
    let files = examples()?;
    assert!(files.len() >= 3, "examples/ holds {files:?}");
    let (mut compared, mut total) = (0, 0);
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        let printed: Vec<Value> =
            serde_yaml::Deserializer::from_str(&render::render_yaml(&text, NS)?)
                .map(Value::deserialize)
                .collect::<Result<_, _>>()?;
        total += printed.len();
        for offline in render::clusters(&text, NS)? {
            let name = offline.name_any();
            let at = format!("{}: {name}", file.display());
            let cluster = h
                .create(&name, serde_json::to_value(&offline.spec)?)
                .await?;
            h.pass(&name).await?;
            let uid = cluster.metadata.uid.clone().ok_or("no uid")?;

            let mine: Vec<&Value> = printed
                .iter()
                .filter(|o| o["metadata"]["ownerReferences"][0]["name"] == name.as_str())
                .collect();
            // The same set of objects: everything printed was written, and of the children
            // the operator can write for a cluster, none that was not printed exists.
            let mut printed_names = Vec::new();
            for object in &mine {
                let kind = object["kind"].as_str().unwrap_or("");
                let child = object["metadata"]["name"].as_str().unwrap_or("");
                printed_names.push((resource(kind)?, child.to_owned()));
            }
            let mut possible: Vec<(&str, String)> = children(&name).into();
            possible.push(("ingresses.networking.k8s.io", name.clone()));
            for (resource, child) in &possible {
                let written = h.object(resource, child).await?.is_some();
                let listed = printed_names
                    .iter()
                    .any(|(r, c)| r == resource && c == child);
                assert_eq!(
                    written, listed,
                    "{at}: {resource} {child} written vs printed"
                );
            }
            assert_eq!(printed_names.len(), mine.len(), "{at}: one object per name");

            for object in mine {
                let kind = object["kind"].as_str().unwrap_or("");
                let child = object["metadata"]["name"].as_str().unwrap_or("");
                let stored = h
                    .object(resource(kind)?, child)
                    .await?
                    .ok_or(format!("{at}: no {kind} {child}"))?;
                // What the API server assigns and render can only stand in for: the uid in
                // the owner reference, and the peer Secret's random key (only its name is
                // compared; the operator creates that Secret once and never rewrites it).
                let mut expected = object.clone();
                let reference = &mut expected["metadata"]["ownerReferences"][0]["uid"];
                assert_eq!(*reference, render::PLACEHOLDER_UID, "{at}: {kind} {child}");
                *reference = Value::from(uid.as_str());
                if kind == "Secret" {
                    let Some(Value::Object(keys)) = expected.get_mut("data") else {
                        return Err(format!("{at}: Secret {child} without data").into());
                    };
                    for (key, value) in keys.iter_mut() {
                        let written = &stored["data"][key.as_str()];
                        assert!(written.is_string(), "{at}: Secret {child} key {key}");
                        *value = written.clone();
                    }
                }
                assert_contains(&stored, &expected, &format!("{at}: {kind} {child}"));
                compared += 1;
            }
        }
    }
    // Every printed object belonged to a cluster of its file and was compared.
    assert!(compared > 0);
    assert_eq!(compared, total, "objects compared over {files:?}");
    Ok(())
}
