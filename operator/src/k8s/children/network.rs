//! How nodes and clients reach the pods: the headless peer Service, the client Service, and the
//! optional Ingress with what long-lived WebSocket connections need.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use serde_json::json;

use super::{Owner, PEER_PORT, to_json, typed};
use crate::Error;
use crate::k8s::crd::ChatClusterSpec;

/// Annotations ingress-nginx needs for WebSockets: its default 60 s read/send timeouts would
/// cut an idle chat connection every minute. User annotations override these.
pub const WEBSOCKET_ANNOTATIONS: [(&str, &str); 2] = [
    ("nginx.ingress.kubernetes.io/proxy-read-timeout", "3600"),
    ("nginx.ingress.kubernetes.io/proxy-send-timeout", "3600"),
];

/// The headless Service that gives each pod a DNS name, on the peer port. Not-ready pods are
/// published too: a starting node is reached by its peers before it is ready.
///
/// # Errors
///
/// [`Error::Invalid`] on a builder bug (the objects are built from JSON documents; see the module doc).
pub fn peers_service(owner: &Owner) -> Result<Service, Error> {
    typed(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": to_json(&owner.meta(&owner.names.peers_service))?,
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": owner.selector(),
            "ports": [{"name": "peer", "port": PEER_PORT, "targetPort": "peer", "protocol": "TCP"}],
        },
    }))
}

/// The Service clients connect to: type, port and annotations from `spec.service`, routing to
/// ready pods only.
///
/// # Errors
///
/// [`Error::Invalid`] on a builder bug (the objects are built from JSON documents; see the module doc).
pub fn client_service(owner: &Owner, spec: &ChatClusterSpec) -> Result<Service, Error> {
    let mut meta = owner.meta(&owner.names.client_service);
    if !spec.service.annotations.is_empty() {
        meta.annotations = Some(spec.service.annotations.clone());
    }
    typed(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": to_json(&meta)?,
        "spec": {
            "type": to_json(&spec.service.type_)?,
            "selector": owner.selector(),
            "ports": [{"name": "client", "port": spec.service.port, "targetPort": "client",
                       "protocol": "TCP"}],
        },
    }))
}

/// The Ingress, when `spec.ingress.enabled`; `None` means there should be none.
///
/// # Errors
///
/// [`Error::Invalid`] on a builder bug (the objects are built from JSON documents; see the module doc).
pub fn ingress(owner: &Owner, spec: &ChatClusterSpec) -> Result<Option<Ingress>, Error> {
    let Some(ingress) = spec.ingress.as_ref().filter(|i| i.enabled) else {
        return Ok(None);
    };
    let mut annotations: BTreeMap<String, String> = WEBSOCKET_ANNOTATIONS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    annotations.extend(ingress.annotations.clone());
    let mut meta = owner.meta(&owner.names.ingress);
    meta.annotations = Some(annotations);
    let mut doc = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": to_json(&meta)?,
        "spec": {
            "rules": [{
                "host": ingress.host,
                "http": {"paths": [{
                    "path": "/",
                    "pathType": "Prefix",
                    "backend": {"service": {
                        "name": owner.names.client_service,
                        "port": {"number": spec.service.port},
                    }},
                }]},
            }],
        },
    });
    if let Some(class) = &ingress.class_name {
        doc["spec"]["ingressClassName"] = json!(class);
    }
    if let Some(secret) = &ingress.tls_secret_name {
        doc["spec"]["tls"] = json!([{"hosts": [ingress.host], "secretName": secret}]);
    }
    typed(doc).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::children::tests::{assert_owned, cluster, owner};
    use serde_json::json;

    #[test]
    fn the_peer_service_is_headless_on_the_peer_port() {
        let svc = peers_service(&owner()).expect("service");
        assert_owned(&svc.metadata, "chat-peers");
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        let ports = spec.ports.expect("ports");
        assert_eq!(ports[0].port, i32::from(PEER_PORT));
        assert_eq!(spec.selector, Some(owner().selector()));
    }

    #[test]
    fn the_client_service_takes_type_port_and_annotations_from_the_spec() {
        let cluster = cluster(json!({"replicas": 1, "service": {"type": "LoadBalancer",
            "port": 443, "annotations": {"lb.example/internal": "true"}}}));
        let owner = Owner::of(&cluster).expect("owner");
        let svc = client_service(&owner, &cluster.spec).expect("service");
        assert_owned(&svc.metadata, "chat");
        let annotations = svc.metadata.annotations.expect("annotations");
        assert_eq!(
            annotations.get("lb.example/internal").map(String::as_str),
            Some("true")
        );
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.ports.expect("ports")[0].port, 443);
    }

    #[test]
    fn no_ingress_is_built_unless_enabled() {
        let absent = cluster(json!({"replicas": 1}));
        let owner = Owner::of(&absent).expect("owner");
        assert!(ingress(&owner, &absent.spec).expect("build").is_none());
        let disabled = cluster(json!({"replicas": 1, "ingress": {"host": "chat.example"}}));
        assert!(ingress(&owner, &disabled.spec).expect("build").is_none());
    }

    #[test]
    fn the_ingress_keeps_websockets_open_and_lets_the_user_override() {
        let cluster = cluster(json!({"replicas": 1, "ingress": {"enabled": true,
            "host": "chat.example", "className": "nginx", "tlsSecretName": "chat-tls",
            "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "7200",
                            "cert-manager.io/cluster-issuer": "le"}}}));
        let owner = Owner::of(&cluster).expect("owner");
        let ing = ingress(&owner, &cluster.spec)
            .expect("build")
            .expect("enabled");
        assert_owned(&ing.metadata, "chat");
        let annotations = ing.metadata.annotations.expect("annotations");
        let get = |k: &str| annotations.get(k).map(String::as_str);
        assert_eq!(
            get("nginx.ingress.kubernetes.io/proxy-read-timeout"),
            Some("7200")
        );
        assert_eq!(
            get("nginx.ingress.kubernetes.io/proxy-send-timeout"),
            Some("3600")
        );
        assert_eq!(get("cert-manager.io/cluster-issuer"), Some("le"));
        let spec = ing.spec.expect("spec");
        assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
        let tls = spec.tls.expect("tls");
        assert_eq!(tls[0].secret_name.as_deref(), Some("chat-tls"));
        assert_eq!(tls[0].hosts, Some(vec!["chat.example".to_owned()]));
        let rule = &spec.rules.expect("rules")[0];
        assert_eq!(rule.host.as_deref(), Some("chat.example"));
        let backend = rule.http.as_ref().expect("http").paths[0]
            .backend
            .service
            .clone();
        let backend = backend.expect("service backend");
        assert_eq!(backend.name, "chat");
        assert_eq!(backend.port.and_then(|p| p.number), Some(80));
    }
}
