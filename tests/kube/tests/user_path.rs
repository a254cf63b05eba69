//! The user's path on a real control plane: `helm install` of the operator chart, `kubectl
//! apply` of a ChatCluster, the real StatefulSet controller making Ready pods, clients chatting
//! across pods and through the client Service, invalid specs refused by the real API server,
//! RBAC held by the real authorizer (and matching `roomshard-operator rbac`), then `kubectl
//! delete chat` through the real garbage collector and `helm uninstall`.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use kube_e2e::chat::ChatClient;
use kube_e2e::{Cluster, OPERATOR_NS, TestResult, binary, eventually, kubectl_row, with_cluster};
use kubeharness::service_proxy::ServiceProxy;
use operator::k8s::crd::ChatCluster;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_installs_the_chart_runs_a_chat_cluster_and_removes_it() -> TestResult {
    with_cluster(3, |c| Box::pin(user_path(c))).await
}

async fn user_path(cluster: &Cluster) -> TestResult {
    let client = cluster.client().await?;

    // 1. helm install: two operator replicas, one of them the Lease holder.
    cluster.install_operator(&[]).await?;
    let ops: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NS);
    let operator_pods = ops.list(&ListParams::default()).await?;
    assert_eq!(
        operator_pods.items.len(),
        2,
        "the chart runs two operator replicas"
    );
    let holder = eventually(
        "an operator replica holds the Lease",
        Duration::from_secs(30),
        || cluster.lease_holder(),
    )
    .await?;
    assert!(
        operator_pods.items.iter().any(|p| p.name_any() == holder),
        "the Lease holder {holder} is one of the chart's pods"
    );

    // 2. kubectl apply; the real StatefulSet controller makes the pods; they become Ready.
    cluster
        .kubectl(&["apply", "-f", "examples/minimal.yaml"])
        .await?;
    let chats: Api<ChatCluster> = Api::namespaced(client.clone(), "default");
    eventually(
        "minimal is Running with 3 ready pods",
        Duration::from_secs(90),
        || async {
            let c = chats.get("minimal").await.ok()?;
            let s = c.status?;
            (s.phase.as_deref() == Some("Running") && s.ready_nodes == 3).then_some(())
        },
    )
    .await?;
    let table = cluster.kubectl(&["get", "chat"]).await?;
    let header = kubectl_row(&table, 0);
    assert_eq!(
        header,
        [
            "NAME", "REPLICAS", "READY", "UPDATED", "SHARDS", "EPOCH", "PHASE", "AGE"
        ]
    );
    let row = kubectl_row(&table, 1);
    assert_eq!(
        &row[..5],
        ["minimal", "3", "3", "3", "256"],
        "kubectl get chat: {table}"
    );
    assert_eq!(row[6], "Running");
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let owner = sts.get("minimal").await?.owner_references().to_vec();
    assert_eq!(owner.first().map(|o| o.kind.as_str()), Some("ChatCluster"));

    // 3. Clients on different pods share a room; a client through the Service too.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let ip = |name: &'static str| {
        let pods = pods.clone();
        async move {
            let p = pods.get(name).await?;
            let ip = p.status.and_then(|s| s.pod_ip).ok_or("pod has no IP")?;
            TestResult::Ok(format!("{ip}:8080"))
        }
    };
    let mut alice = ChatClient::connect(&ip("minimal-0").await?, "alice").await?;
    let mut bob = ChatClient::connect(&ip("minimal-2").await?, "bob").await?;
    let proxy = ServiceProxy::start(client.clone(), "default", "minimal", "client").await?;
    eventually(
        "the client Service has 3 endpoints",
        Duration::from_secs(30),
        || async { (proxy.endpoints().len() == 3).then_some(()) },
    )
    .await?;
    let mut carol = ChatClient::connect(&proxy.addr.to_string(), "carol").await?;
    for room in ["lobby", "ops", "random", "dev"] {
        alice.join(room, None).await?;
        bob.join(room, None).await?;
        carol.join(room, None).await?;
        let seq = alice.say(room, &format!("hello-{room}")).await?;
        assert_eq!(seq, 1, "first message in {room}");
        let got = bob.expect("msg").await?;
        assert_eq!(got["text"], format!("hello-{room}"));
        let got = carol.expect("msg").await?;
        assert_eq!(
            (got["user"].as_str(), got["seq"].as_u64()),
            (Some("alice"), Some(1))
        );
    }

    // 4. Invalid specs are refused by the API server with the field named.
    let bad = |doc: &str| doc.to_owned();
    for (doc, field) in [
        (
            bad(
                "{\"apiVersion\":\"roomshard.dev/v1alpha1\",\"kind\":\"ChatCluster\",\"metadata\":{\"name\":\"neg\"},\"spec\":{\"replicas\":-1}}",
            ),
            "spec.replicas",
        ),
        (
            bad(
                "{\"apiVersion\":\"roomshard.dev/v1alpha1\",\"kind\":\"ChatCluster\",\"metadata\":{\"name\":\"unk\"},\"spec\":{\"replicaz\":3}}",
            ),
            "replicaz",
        ),
        (
            bad(
                "{\"apiVersion\":\"roomshard.dev/v1alpha1\",\"kind\":\"ChatCluster\",\"metadata\":{\"name\":\"minimal\"},\"spec\":{\"replicas\":3,\"shards\":512}}",
            ),
            "shards",
        ),
    ] {
        let file = cluster.inner.plane.dir.join("bad.json");
        std::fs::write(&file, doc)?;
        let out = cluster
            .kubectl_as(
                cluster.inner.kubeconfig(),
                &["apply", "-f", &file.display().to_string()],
            )
            .await?;
        assert!(!out.ok, "the API server accepted an invalid spec ({field})");
        assert!(
            out.stderr.contains(field),
            "the refusal names {field}: {}",
            out.stderr
        );
    }

    // 5. RBAC: a node pod's ServiceAccount reads its own ConfigMap and nothing else.
    let token = cluster
        .kubectl(&["create", "token", "minimal-node"])
        .await?;
    let as_node = |args: &[&str]| {
        let mut all = vec![
            "--server".to_owned(),
            cluster.inner.plane.server.clone(),
            "--certificate-authority".to_owned(),
            cluster.inner.plane.ca_file.display().to_string(),
            "--token".to_owned(),
            token.trim().to_owned(),
        ];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        all
    };
    let empty = cluster.inner.plane.dir.join("empty.kubeconfig");
    std::fs::write(&empty, "apiVersion: v1\nkind: Config\n")?;
    let run = |args: Vec<String>| {
        let empty = empty.clone();
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            cluster.kubectl_as(&empty, &refs).await
        }
    };
    let own = run(as_node(&[
        "get",
        "configmap",
        "minimal-assignments",
        "-o",
        "name",
    ]))
    .await?;
    assert!(own.ok, "a node reads its own ConfigMap: {}", own.stderr);
    for forbidden in [
        vec!["get", "configmap", "kube-root-ca.crt"],
        vec!["get", "secrets"],
        vec!["get", "pods"],
        vec!["-n", OPERATOR_NS, "get", "configmaps"],
    ] {
        let out = run(as_node(&forbidden)).await?;
        assert!(
            !out.ok && out.stderr.contains("Forbidden"),
            "node may not {forbidden:?}: {}",
            out.stderr
        );
    }

    // Everything the operator and the nodes asked the API server for is covered by the rules
    // `roomshard-operator rbac` prints (which the chart and the per-cluster Role are made of),
    // and nothing they asked for was refused.
    check_audit(cluster).await?;

    // 6. kubectl delete chat: the real garbage collector removes every child.
    let chat_uid = chats.get("minimal").await?.uid().unwrap_or_default();
    let children = owned_by(cluster, &chat_uid).await?;
    for kind in [
        "StatefulSet",
        "Service",
        "ConfigMap",
        "Secret",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "PodDisruptionBudget",
    ] {
        assert!(
            children.iter().any(|(k, _)| k == kind),
            "the ChatCluster owns a {kind}: {children:?}"
        );
    }
    cluster
        .kubectl(&["delete", "chat", "minimal", "--wait=true"])
        .await?;
    eventually(
        "every child and pod of minimal is gone",
        Duration::from_secs(90),
        || async {
            let left = owned_by(cluster, &chat_uid).await.ok()?;
            let pods = pods
                .list(&ListParams::default().labels("app.kubernetes.io/instance=minimal"))
                .await
                .ok()?;
            (left.is_empty() && pods.items.is_empty()).then_some(())
        },
    )
    .await?;

    // 7. helm uninstall leaves nothing but the CRD.
    cluster
        .helm(&[
            "uninstall",
            "roomshard-operator",
            "-n",
            OPERATOR_NS,
            "--wait",
        ])
        .await?;
    eventually(
        "the operator's namespace holds nothing of roomshard",
        Duration::from_secs(60),
        || async {
            let out = cluster
                .kubectl(&[
                    "-n",
                    OPERATOR_NS,
                    "get",
                    "all,sa,role,rolebinding,cm,secret,lease,networkpolicy,pdb",
                    "-o",
                    "name",
                ])
                .await
                .ok()?;
            let left: Vec<&str> = out
                .lines()
                .filter(|l| !["serviceaccount/default", "configmap/kube-root-ca.crt"].contains(l))
                .collect();
            left.is_empty().then_some(()).or_else(|| {
                eprintln!("still there: {left:?}");
                None
            })
        },
    )
    .await?;
    let cluster_scoped = cluster
        .kubectl(&["get", "clusterrole,clusterrolebinding", "-o", "name"])
        .await?;
    assert!(
        !cluster_scoped.contains("roomshard"),
        "cluster-scoped RBAC left: {cluster_scoped}"
    );
    cluster
        .kubectl(&["get", "crd", "chatclusters.roomshard.dev"])
        .await?;
    Ok(())
}

/// `(kind, name)` of every object in `default` whose owner is `uid`.
async fn owned_by(cluster: &Cluster, uid: &str) -> TestResult<Vec<(String, String)>> {
    let out = cluster
        .kubectl(&["get", "statefulset,service,configmap,secret,serviceaccount,role,rolebinding,pdb,networkpolicy,ingress", "-o", "json"])
        .await?;
    let list: Value = serde_json::from_str(&out)?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| {
            o["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
        })
        .map(|o| {
            (
                o["kind"].as_str().unwrap_or("").to_owned(),
                o["metadata"]["name"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect())
}

/// Reads the audit log: every request by the operator's and the nodes' ServiceAccounts must be
/// allowed by `roomshard-operator rbac`'s rules for that component, and none may be refused.
async fn check_audit(cluster: &Cluster) -> TestResult {
    let out = tokio::process::Command::new(binary("roomshard-operator"))
        .arg("rbac")
        .output()
        .await?;
    let rules: Value = serde_json::from_slice(&out.stdout)?;
    let log = std::fs::read_to_string(cluster.inner.plane.audit_log())?;
    let mut used: BTreeSet<(String, String, String, String)> = BTreeSet::new();
    for line in log.lines() {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let user = event["user"]["username"].as_str().unwrap_or("");
        let component = if user == format!("system:serviceaccount:{OPERATOR_NS}:roomshard-operator")
        {
            "operator"
        } else if user == "system:serviceaccount:default:minimal-node" {
            "node"
        } else {
            continue;
        };
        let obj = &event["objectRef"];
        // This test's own kubectl calls with a node's token (the refusals above) are not the
        // node's.
        if event["userAgent"]
            .as_str()
            .is_some_and(|a| a.starts_with("kubectl"))
            || obj.is_null()
        {
            continue; // discovery and /version: open to every authenticated user
        }
        let group = obj["apiGroup"].as_str().unwrap_or("").to_owned();
        let mut resource = obj["resource"].as_str().unwrap_or("").to_owned();
        if let Some(sub) = obj["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        let verb = event["verb"].as_str().unwrap_or("").to_owned();
        let code = event["responseStatus"]["code"].as_i64().unwrap_or(0);
        assert_ne!(
            code, 403,
            "the {component} was refused {verb} {group}/{resource}: {line}"
        );
        used.insert((component.to_owned(), group, resource, verb));
    }
    assert!(
        used.iter()
            .any(|(c, _, r, v)| c == "operator" && r == "statefulsets" && v == "patch"),
        "the audit log saw the operator apply its StatefulSet: {used:?}"
    );
    assert!(
        used.iter()
            .any(|(c, _, r, _)| c == "node" && r == "configmaps"),
        "the audit log saw a node read its ConfigMap: {used:?}"
    );
    for (component, group, resource, verb) in &used {
        let allowed = rules[component.as_str()]
            .as_array()
            .into_iter()
            .flatten()
            .any(|rule| {
                rule["apiGroup"] == group.as_str()
                    && rule["resource"] == resource.as_str()
                    && rule["verbs"]
                        .as_array()
                        .is_some_and(|vs| vs.iter().any(|v| v == verb.as_str()))
            });
        assert!(
            allowed,
            "the {component} used {verb} {group}/{resource}, which `roomshard-operator rbac` does not list"
        );
    }
    eprintln!(
        "audit: {} distinct (component, group, resource, verb) requests, all covered by `roomshard-operator rbac`",
        used.len()
    );
    Ok(())
}
