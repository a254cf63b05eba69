//! A cluster for reconciler tests: memkube with the CRD installed, a reconcile [`Context`] with a
//! fake `/status` reader, and a kubelet played by the test (pods created for the StatefulSet's
//! replicas, readiness set explicitly).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use kube::{Client, CustomResourceExt, ResourceExt};
use memkube::{ApiServer, RunningServer};
use operator::decide::Report;
use operator::k8s::crd::{ChatCluster, ChatClusterStatus};
use operator::k8s::metrics::Metrics;
use operator::k8s::observe::{BoxFuture, StatusReader};
use operator::k8s::reconcile::{Context, Options, reconcile};
use serde_json::{Value, json};
use shard::{AssignmentTable, NodeName};

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

pub const NS: &str = "default";

/// What the nodes' `/status` says, as the test sets it; a node without an entry has no report.
#[derive(Debug, Default)]
pub struct FakeNodes {
    reports: Mutex<BTreeMap<String, Report>>,
}

impl FakeNodes {
    /// Sets `pod`'s report.
    pub fn report(&self, pod: &str, report: Report) {
        self.lock().insert(pod.to_owned(), report);
    }

    /// Every listed pod reports that it applied `table`, with nothing in flight and, as the
    /// source, every move of `table` done when `moves_done`.
    pub fn applied(&self, pods: &[&str], table: &AssignmentTable, moves_done: bool) {
        for pod in pods {
            let done = if moves_done {
                table
                    .moves
                    .iter()
                    .filter(|m| m.from.as_str() == *pod)
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            };
            self.report(
                pod,
                Report {
                    epoch: table.epoch,
                    moves_in_flight: 0,
                    moves_done: done,
                    terminating: false,
                },
            );
        }
    }

    /// `pod` stops answering.
    pub fn silence(&self, pod: &str) {
        self.lock().remove(pod);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Report>> {
        self.reports.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl StatusReader for FakeNodes {
    fn read<'a>(
        &'a self,
        pod: &'a NodeName,
        _ip: &'a str,
    ) -> BoxFuture<'a, Result<Report, String>> {
        let report = self.lock().get(pod.as_str()).cloned();
        Box::pin(async move { report.ok_or_else(|| format!("{pod} has no report")) })
    }
}

/// memkube, a client, the fake nodes and a reconcile context.
pub struct Harness {
    pub server: RunningServer,
    pub client: Client,
    pub nodes: Arc<FakeNodes>,
    pub ctx: Arc<Context>,
}

impl Harness {
    /// A server with the ChatCluster CRD installed; the context assigns shards as soon as a pod
    /// is ready (no initial grace) unless `options` says otherwise.
    pub async fn start() -> Result<Harness, Box<dyn std::error::Error + Send + Sync>> {
        Self::with_options(Options {
            initial_grace: Duration::ZERO,
            ..Options::default()
        })
        .await
    }

    pub async fn with_options(
        options: Options,
    ) -> Result<Harness, Box<dyn std::error::Error + Send + Sync>> {
        let server = ApiServer::start("127.0.0.1:0".parse()?).await?;
        let client = server.client()?;
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        crds.create(&PostParams::default(), &ChatCluster::crd())
            .await?;
        let nodes = Arc::new(FakeNodes::default());
        let ctx = Arc::new(new_context(&client, nodes.clone(), options));
        Ok(Harness {
            server,
            client,
            nodes,
            ctx,
        })
    }

    /// A fresh context, as a restarted operator would have.
    pub fn restart_operator(&mut self) {
        let options = self.ctx.options.clone();
        self.ctx = Arc::new(new_context(&self.client, self.nodes.clone(), options));
    }

    pub fn clusters(&self) -> Api<ChatCluster> {
        Api::namespaced(self.client.clone(), NS)
    }

    /// Creates the cluster `name` with `spec` (JSON).
    pub async fn create(&self, name: &str, spec: Value) -> Result<ChatCluster, kube::Error> {
        let cluster: ChatCluster = serde_json::from_value(json!({
            "apiVersion": "roomshard.dev/v1alpha1", "kind": "ChatCluster",
            "metadata": {"name": name, "namespace": NS}, "spec": spec,
        }))
        .map_err(kube::Error::SerdeError)?;
        self.clusters()
            .create(&PostParams::default(), &cluster)
            .await
    }

    /// One reconcile pass over `name`, as the controller would run it.
    pub async fn pass(&self, name: &str) -> Result<Action, operator::Error> {
        let cluster = self.clusters().get(name).await?;
        reconcile(Arc::new(cluster), self.ctx.clone()).await
    }

    /// `name`'s status.
    pub async fn status(&self, name: &str) -> ChatClusterStatus {
        self.clusters()
            .get(name)
            .await
            .ok()
            .and_then(|c| c.status)
            .unwrap_or_default()
    }

    /// The table in `name`'s ConfigMap.
    pub async fn table(&self, name: &str) -> AssignmentTable {
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), NS);
        let cm = cms
            .get(&format!("{name}-assignments"))
            .await
            .expect("configmap");
        let data = cm.data.expect("configmap data");
        AssignmentTable::from_json(&data["table.json"]).expect("valid table")
    }

    /// The StatefulSet's replicas.
    pub async fn replicas(&self, name: &str) -> i32 {
        let sts: Api<StatefulSet> = Api::namespaced(self.client.clone(), NS);
        sts.get(name)
            .await
            .ok()
            .and_then(|s| s.spec?.replicas)
            .unwrap_or(-1)
    }

    /// The store's resourceVersion: unchanged means nothing was written.
    pub fn resource_version(&self) -> u64 {
        self.server.store().resource_version()
    }

    /// Plays the StatefulSet controller: creates the missing pods `0..replicas` (not ready,
    /// with a pod IP) and deletes those at or above `replicas`.
    pub async fn kubelet(&self, name: &str) -> TestResult {
        let store = self.server.store();
        let sts: Api<StatefulSet> = Api::namespaced(self.client.clone(), NS);
        let sts = sts.get(name).await?;
        let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let labels = sts
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let owner = json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name,
            "uid": sts.uid(), "controller": true, "blockOwnerDeletion": true}]);
        for ordinal in 0..replicas {
            let pod = format!("{name}-{ordinal}");
            if store.get("pods", NS, &pod).is_none() {
                store.create(json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": pod, "namespace": NS, "labels": labels,
                                 "ownerReferences": owner},
                    "spec": {"containers": [{"name": "node", "image": "roomshard-node"}]},
                    "status": {"phase": "Pending", "podIP": format!("10.0.0.{}", ordinal + 10)},
                }))?;
            }
        }
        for pod in store.list("pods", Some(NS)) {
            let pod_name = pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let ordinal = pod_name
                .strip_prefix(&format!("{name}-"))
                .and_then(|o| o.parse::<i32>().ok());
            if ordinal.is_some_and(|o| o >= replicas) {
                store.delete("pods", NS, &pod_name)?;
            }
        }
        Ok(())
    }

    /// Sets `pod`'s Ready condition, as the kubelet does from its readiness probe.
    pub fn ready(&self, pod: &str, ready: bool) -> TestResult {
        self.server.store().set_pod_ready(NS, pod, ready)?;
        Ok(())
    }

    /// Creates `name` with `replicas`, runs the kubelet, makes every pod ready and reporting,
    /// and passes until the table assigns every shard.
    pub async fn running(
        &self,
        name: &str,
        spec: Value,
    ) -> Result<AssignmentTable, Box<dyn std::error::Error + Send + Sync>> {
        self.create(name, spec).await?;
        self.pass(name).await?;
        self.kubelet(name).await?;
        let replicas = self.replicas(name).await;
        let pods: Vec<String> = (0..replicas).map(|i| format!("{name}-{i}")).collect();
        for pod in &pods {
            self.ready(pod, true)?;
        }
        self.pass(name).await?;
        let table = self.table(name).await;
        let refs: Vec<&str> = pods.iter().map(String::as_str).collect();
        self.nodes.applied(&refs, &table, true);
        self.pass(name).await?;
        Ok(self.table(name).await)
    }

    /// Event reasons published on `name`, oldest first.
    pub fn events(&self, name: &str) -> Vec<(String, String)> {
        let mut events: Vec<Value> = self
            .server
            .store()
            .list("events.events.k8s.io", Some(NS))
            .into_iter()
            .filter(|e| e["regarding"]["name"] == name)
            .collect();
        events.sort_by_key(|e| {
            e["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse::<u64>().ok())
        });
        events
            .iter()
            .map(|e| {
                (
                    e["reason"].as_str().unwrap_or_default().to_owned(),
                    e["note"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }
}

fn new_context(client: &Client, nodes: Arc<FakeNodes>, options: Options) -> Context {
    Context::new(
        client.clone(),
        Reporter {
            controller: "roomshard-operator".into(),
            instance: Some("test".into()),
        },
        nodes,
        Arc::new(Metrics::default()),
        options,
    )
}

/// The node name `name`.
pub fn n(name: &str) -> NodeName {
    NodeName::new(name).expect("valid node name")
}

/// The condition `type_` of `status`, as (status, reason, message).
pub fn condition(status: &ChatClusterStatus, type_: &str) -> (String, String, String) {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}
