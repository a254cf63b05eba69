//! A container's environment and command line, resolved as the kubelet resolves them: plain
//! values, the downward API (`fieldRef`, `resourceFieldRef`), Secret and ConfigMap keys,
//! `envFrom`, and `$(VAR)` references to variables defined before.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, Pod, Secret};
use kube::{Api, Client};

/// What the process kubelet knows of a pod that the downward API can expose.
#[derive(Debug, Clone)]
pub struct PodFacts {
    /// `status.podIP`.
    pub pod_ip: String,
    /// `status.hostIP`.
    pub host_ip: String,
    /// `spec.nodeName`.
    pub node_name: String,
}

/// The value of a downward-API `fieldPath` for `pod`.
///
/// # Errors
///
/// A message naming the path when it is not one the downward API offers.
pub fn field(pod: &Pod, facts: &PodFacts, path: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    let keyed = |prefix: &str, map: &Option<BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(
            map.as_ref()
                .and_then(|m| m.get(key))
                .cloned()
                .unwrap_or_default(),
        )
    };
    if let Some(v) = keyed("metadata.labels['", &meta.labels) {
        return Ok(v);
    }
    if let Some(v) = keyed("metadata.annotations['", &meta.annotations) {
        return Ok(v);
    }
    let spec = pod.spec.as_ref();
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => facts.node_name.clone(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_owned()),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        "metadata.labels" => flatten(meta.labels.as_ref()),
        "metadata.annotations" => flatten(meta.annotations.as_ref()),
        other => return Err(format!("unsupported fieldPath {other:?}")),
    })
}

/// Labels and annotations as the downward API writes them to a file: `key="value"` lines.
fn flatten(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}\n"))
        .collect()
}

/// A `resourceFieldRef` value: the container's limit or request, else what the Node offers.
pub fn resource(container: &Container, resource: &str, divisor: Option<&str>) -> String {
    let resources = container.resources.as_ref();
    let (kind, name) = resource.split_once('.').unwrap_or(("limits", resource));
    let set = match kind {
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => resources.and_then(|r| r.limits.as_ref()),
    };
    let quantity = set
        .and_then(|s| s.get(name))
        .map(|q| q.0.clone())
        .unwrap_or_else(|| match name {
            "cpu" => super::node::CPU.to_owned(),
            _ => super::node::MEMORY_BYTES.to_string(),
        });
    match (name, divisor) {
        ("cpu", Some("1m")) => cpu_millis(&quantity).to_string(),
        ("cpu", _) => cpu_millis(&quantity).div_ceil(1000).to_string(),
        _ => quantity,
    }
}

fn cpu_millis(q: &str) -> u64 {
    match q.strip_suffix('m') {
        Some(m) => m.parse().unwrap_or(0),
        None => q.parse::<f64>().map(|c| (c * 1000.0) as u64).unwrap_or(0),
    }
}

/// Expands `$(NAME)` from `vars`; `$$(NAME)` is a literal `$(NAME)`; an unknown name stays as
/// written, as the kubelet leaves it.
#[must_use]
pub fn expand(input: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(literal) = tail.strip_prefix("$$") {
            out.push('$');
            rest = literal;
        } else if let Some(open) = tail.strip_prefix("$(")
            && let Some(close) = open.find(')')
        {
            let name = &open[..close];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&tail[..close + 3]),
            }
            rest = &open[close + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Reads a key of a Secret or ConfigMap in the pod's namespace. `Ok(None)` when it is missing
/// and the reference is optional.
async fn key_of(
    client: &Client,
    ns: &str,
    secret: bool,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<String>, String> {
    let value = if secret {
        Api::<Secret>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(|e| format!("secret {name}: {e}"))?
            .and_then(|s| s.data)
            .and_then(|d| {
                d.get(key)
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            })
    } else {
        Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(|e| format!("configmap {name}: {e}"))?
            .and_then(|c| c.data)
            .and_then(|d| d.get(key).cloned())
    };
    match value {
        Some(v) => Ok(Some(v)),
        None if optional => Ok(None),
        None => Err(format!(
            "{} {name} has no key {key:?}",
            if secret { "secret" } else { "configmap" }
        )),
    }
}

/// The container's environment in definition order, with the variables every pod gets
/// (`KUBERNETES_SERVICE_HOST` and friends pointing at the API server) first.
///
/// # Errors
///
/// A message when a referenced Secret or ConfigMap key is missing and not optional, or a field
/// is not one the downward API offers; the kubelet keeps the container waiting on it.
pub async fn environment(
    client: &Client,
    pod: &Pod,
    container: &Container,
    facts: &PodFacts,
    api: (&str, u16),
) -> Result<BTreeMap<String, String>, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let (host, port) = api;
    let mut vars = BTreeMap::new();
    vars.insert("KUBERNETES_SERVICE_HOST".to_owned(), host.to_owned());
    vars.insert("KUBERNETES_SERVICE_PORT".to_owned(), port.to_string());
    vars.insert("KUBERNETES_SERVICE_PORT_HTTPS".to_owned(), port.to_string());
    vars.insert("KUBERNETES_PORT".to_owned(), format!("tcp://{host}:{port}"));
    vars.insert(
        "HOSTNAME".to_owned(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (secret, name, optional) = match (&from.secret_ref, &from.config_map_ref) {
            (Some(s), _) => (true, s.name.clone(), s.optional.unwrap_or(false)),
            (None, Some(c)) => (false, c.name.clone(), c.optional.unwrap_or(false)),
            (None, None) => continue,
        };
        let data: BTreeMap<String, String> = if secret {
            match Api::<Secret>::namespaced(client.clone(), ns)
                .get_opt(&name)
                .await
            {
                Ok(Some(s)) => s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect(),
                Ok(None) if optional => BTreeMap::new(),
                Ok(None) => return Err(format!("secret {name} not found")),
                Err(e) => return Err(format!("secret {name}: {e}")),
            }
        } else {
            match Api::<ConfigMap>::namespaced(client.clone(), ns)
                .get_opt(&name)
                .await
            {
                Ok(Some(c)) => c.data.unwrap_or_default(),
                Ok(None) if optional => BTreeMap::new(),
                Ok(None) => return Err(format!("configmap {name} not found")),
                Err(e) => return Err(format!("configmap {name}: {e}")),
            }
        };
        for (k, v) in data {
            vars.insert(format!("{prefix}{k}"), v);
        }
    }
    for EnvVar {
        name,
        value,
        value_from,
    } in container.env.iter().flatten()
    {
        let resolved = match (value, value_from) {
            (Some(v), _) => Some(expand(v, &vars)),
            (None, Some(from)) => {
                if let Some(f) = &from.field_ref {
                    Some(field(pod, facts, &f.field_path)?)
                } else if let Some(r) = &from.resource_field_ref {
                    Some(resource(
                        container,
                        &r.resource,
                        r.divisor.as_ref().map(|d| d.0.as_str()),
                    ))
                } else if let Some(s) = &from.secret_key_ref {
                    key_of(
                        client,
                        ns,
                        true,
                        &s.name,
                        &s.key,
                        s.optional.unwrap_or(false),
                    )
                    .await?
                } else if let Some(c) = &from.config_map_key_ref {
                    key_of(
                        client,
                        ns,
                        false,
                        &c.name,
                        &c.key,
                        c.optional.unwrap_or(false),
                    )
                    .await?
                } else {
                    None
                }
            }
            (None, None) => Some(String::new()),
        };
        if let Some(v) = resolved {
            vars.insert(name.clone(), v);
        }
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        [("A", "1"), ("NS", "chat")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn references_to_defined_variables_expand_and_unknown_ones_stay_as_written() {
        assert_eq!(expand("--ns=$(NS)", &vars()), "--ns=chat");
        assert_eq!(expand("$(A)$(A)x", &vars()), "11x");
        assert_eq!(expand("$(NOPE)", &vars()), "$(NOPE)");
    }

    #[test]
    fn a_doubled_dollar_is_a_literal_reference() {
        assert_eq!(expand("$$(A) $5 $", &vars()), "$(A) $5 $");
    }

    #[test]
    fn cpu_quantities_convert_to_the_divisor() {
        let c = Container {
            name: "c".into(),
            resources: Some(k8s_openapi::api::core::v1::ResourceRequirements {
                limits: Some(
                    [(
                        "cpu".to_owned(),
                        k8s_openapi::apimachinery::pkg::api::resource::Quantity("1500m".into()),
                    )]
                    .into(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(resource(&c, "limits.cpu", Some("1m")), "1500");
        assert_eq!(resource(&c, "limits.cpu", None), "2");
    }
}
