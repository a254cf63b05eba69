//! A cluster for reconciler tests: the real control plane (kube-apiserver, the StatefulSet
//! controller, the garbage collector, the scheduler; no Nodes) with the CRD installed, a
//! reconcile [`Context`] with a fake `/status` reader, and the kubelet played by the test: the
//! real StatefulSet controller creates and deletes the pods, which stay unscheduled (there is
//! no Node), and the test writes their Ready condition and address to their status as the
//! kubelet would.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use kube::runtime::wait::{Condition, await_condition, conditions};
use kube::runtime::watcher;
use kube::{Client, CustomResourceExt, Resource, ResourceExt};
use kubeharness::{TestCluster, TestClusterOptions};
use operator::decide::Report;
use operator::k8s::children::FIELD_MANAGER;
use operator::k8s::crd::{ChatCluster, ChatClusterStatus};
use operator::k8s::metrics::Metrics;
use operator::k8s::observe::{BoxFuture, StatusReader};
use operator::k8s::reconcile::{Context, Options, reconcile};
use serde_json::{Value, json};
use shard::{AssignmentTable, NodeName};

pub type TestError = Box<dyn std::error::Error + Send + Sync>;
pub type TestResult<T = ()> = Result<T, TestError>;

pub const NS: &str = "default";

/// How long the real control plane gets for anything asynchronous (a controller acting, the
/// garbage collector, a watch event): generous, as the machine may be busy; a passing test
/// waits only as long as it has to.
pub const WITHIN: Duration = Duration::from_secs(60);

/// A control plane with no Nodes: enough for everything but running pods.
///
/// # Errors
///
/// When the harness cannot start (it needs root and `testing/controlplane/build.sh`).
pub async fn control_plane() -> TestResult<TestCluster> {
    Ok(TestCluster::start(TestClusterOptions {
        nodes: 0,
        images: BTreeMap::new(),
        ..TestClusterOptions::default()
    })
    .await?)
}

/// Waits (on a watch, no polling) until `name` meets `condition`.
///
/// # Errors
///
/// When the watch fails or [`WITHIN`] passes first, naming `what`.
pub async fn until<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    condition: impl Condition<K>,
) -> TestResult
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    tokio::time::timeout(WITHIN, await_condition(api.clone(), name, condition))
        .await
        .map_err(|_| format!("timed out after {WITHIN:?}: {what}"))??;
    Ok(())
}

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
    /// source, every move of `table` done when `moves_done`; it holds a live copy of every
    /// shard `table` gives it to follow (replication 2), none still catching up.
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
                    following: u32::try_from(table.followed_by(&n(pod)).len()).unwrap_or(u32::MAX),
                    ..Report::default()
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

/// The control plane, an admin client, the fake nodes and a reconcile context. Dropping it
/// stops the control plane (its processes are killed with their handles).
pub struct Harness {
    pub cluster: TestCluster,
    pub client: Client,
    pub nodes: Arc<FakeNodes>,
    pub ctx: Arc<Context>,
}

impl Harness {
    /// A control plane with the ChatCluster CRD installed; the context assigns shards as soon
    /// as a pod is ready (no initial grace) unless `options` says otherwise.
    pub async fn start() -> TestResult<Harness> {
        Self::with_options(Options {
            initial_grace: Duration::ZERO,
            ..Options::default()
        })
        .await
    }

    pub async fn with_options(options: Options) -> TestResult<Harness> {
        let cluster = control_plane().await?;
        let client = cluster.client().await?;
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let crd = ChatCluster::crd();
        crds.create(&PostParams::default(), &crd).await?;
        // A real API server serves a new CRD's resource only once it is Established.
        until(
            &crds,
            &crd.name_any(),
            "the CRD is established",
            conditions::is_crd_established(),
        )
        .await?;
        let nodes = Arc::new(FakeNodes::default());
        let ctx = Arc::new(new_context(&client, nodes.clone(), options));
        Ok(Harness {
            cluster,
            client,
            nodes,
            ctx,
        })
    }

    /// Stops the control plane and removes its files.
    pub async fn stop(self) {
        self.cluster.stop().await;
    }

    /// A fresh context, as a restarted operator would have.
    pub fn restart_operator(&mut self) {
        let options = self.ctx.options.clone();
        self.ctx = Arc::new(new_context(&self.client, self.nodes.clone(), options));
    }

    pub fn clusters(&self) -> Api<ChatCluster> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub fn pods(&self) -> Api<Pod> {
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

    /// `resource`'s object `name` in [`NS`] as JSON, if it exists. `resource` is kubectl's
    /// spelling (`statefulsets.apps`, `services`, ...).
    pub async fn object(&self, resource: &str, name: &str) -> TestResult<Option<Value>> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), NS, &api_resource(resource)?);
        Ok(api
            .get_opt(name)
            .await?
            .map(serde_json::to_value)
            .transpose()?)
    }

    /// Waits (on a watch) until `resource` `name` is gone.
    pub async fn until_gone(&self, resource: &str, name: &str) -> TestResult {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), NS, &api_resource(resource)?);
        let Some(object) = api.get_opt(name).await? else {
            return Ok(());
        };
        self.until_deleted(resource, name, &object.uid().unwrap_or_default())
            .await
    }

    /// Waits until the object `name` with `uid` is gone. A controller may already have made
    /// another one of that name (a StatefulSet replaces its pod at once), so what is waited
    /// for is this uid, taken before the deletion could have happened.
    pub async fn until_deleted(&self, resource: &str, name: &str, uid: &str) -> TestResult {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), NS, &api_resource(resource)?);
        until(
            &api,
            name,
            &format!("{resource} {name} (uid {uid}) is gone"),
            conditions::is_deleted(uid),
        )
        .await
    }

    /// What the operator has written for `name`: the cluster's resourceVersion (only the
    /// operator writes it and its status), each child as the operator owns it, and each
    /// event's resourceVersion. Unchanged means nothing was written.
    ///
    /// (Not etcd's revision, nor a child's resourceVersion: Kubernetes' own controllers write
    /// a PodDisruptionBudget's and a StatefulSet's status whenever pods change, so a child
    /// counts by its content without `status` and by the operator's managedFields entries.)
    pub async fn written(&self, name: &str) -> TestResult<BTreeMap<String, String>> {
        let mut seen = BTreeMap::new();
        let cluster = self.clusters().get(name).await?;
        seen.insert(
            format!("chatcluster/{name}"),
            cluster.resource_version().unwrap_or_default(),
        );
        for (resource, child) in children(name) {
            if let Some(o) = self.object(resource, &child).await? {
                seen.insert(format!("{resource}/{child}"), as_operator_wrote(o));
            }
        }
        for e in self.event_objects(name).await? {
            seen.insert(
                format!("event/{}", e.name_any()),
                e.resource_version().unwrap_or_default(),
            );
        }
        Ok(seen)
    }

    /// Waits (on a watch of the pods) until `check` holds for the pods of [`NS`], by name.
    pub async fn until_pods(
        &self,
        what: &str,
        check: impl Fn(&BTreeMap<String, Pod>) -> bool,
    ) -> TestResult {
        let mut events = watcher(self.pods(), watcher::Config::default()).boxed();
        let mut pods = BTreeMap::new();
        let mut listing = BTreeMap::new();
        let mut listed = false;
        let waited = tokio::time::timeout(WITHIN, async {
            while let Some(event) = events.next().await {
                match event? {
                    watcher::Event::Init => listing.clear(),
                    watcher::Event::InitApply(p) => {
                        listing.insert(p.name_any(), p);
                    }
                    watcher::Event::InitDone => {
                        pods = std::mem::take(&mut listing);
                        listed = true;
                    }
                    watcher::Event::Apply(p) => {
                        pods.insert(p.name_any(), p);
                    }
                    watcher::Event::Delete(p) => {
                        pods.remove(&p.name_any());
                    }
                }
                // Only once the first list is complete: a partial one could pass by accident.
                if listed && check(&pods) {
                    return Ok(());
                }
            }
            TestResult::Err("the pod watch ended".into())
        })
        .await;
        waited.map_err(|_| format!("timed out after {WITHIN:?}: {what}"))?
    }

    /// Waits until the real StatefulSet controller has made the pods `0..replicas` of `name`
    /// and removed (or started removing) those above, as the StatefulSet now says.
    pub async fn statefulset_pods(&self, name: &str) -> TestResult {
        let replicas = self.replicas(name).await;
        let prefix = format!("{name}-");
        self.until_pods(
            &format!("{name}'s pods follow the StatefulSet's {replicas} replicas"),
            |pods| {
                let ordinals = |terminating: bool| -> Vec<i32> {
                    let mut o: Vec<i32> = pods
                        .values()
                        .filter(|p| p.metadata.deletion_timestamp.is_some() == terminating)
                        .filter_map(|p| p.name_any().strip_prefix(&prefix)?.parse().ok())
                        .collect();
                    o.sort_unstable();
                    o
                };
                ordinals(false) == (0..replicas).collect::<Vec<_>>()
            },
        )
        .await
    }

    /// Sets `pod`'s Ready condition and its address (`10.0.0.{ordinal + 10}`), as the kubelet
    /// does from its readiness probe. A strategic merge patch of the status subresource, so
    /// the scheduler's `PodScheduled` condition is kept.
    pub async fn ready(&self, pod: &str, ready: bool) -> TestResult {
        let ordinal: u32 = pod
            .rsplit('-')
            .next()
            .and_then(|o| o.parse().ok())
            .ok_or(format!("{pod} has no ordinal"))?;
        let ip = format!("10.0.0.{}", ordinal + 10);
        let status = if ready { "True" } else { "False" };
        let patch = json!({"status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            // Long ago: the StatefulSet controller counts a pod available only `minReadySeconds`
            // after it turned Ready, and these tests are not about that wait.
            "conditions": [{"type": "Ready", "status": status,
                            "lastTransitionTime": "2020-01-01T00:00:00Z"}],
        }});
        self.pods()
            .patch_status(pod, &PatchParams::default(), &Patch::Strategic(patch))
            .await?;
        Ok(())
    }

    /// Creates `name` with `replicas`, lets the StatefulSet controller make the pods, makes
    /// every pod ready and reporting, and passes until the table assigns every shard.
    pub async fn running(&self, name: &str, spec: Value) -> TestResult<AssignmentTable> {
        self.create(name, spec).await?;
        self.pass(name).await?;
        self.statefulset_pods(name).await?;
        let replicas = self.replicas(name).await;
        let pods: Vec<String> = (0..replicas).map(|i| format!("{name}-{i}")).collect();
        for pod in &pods {
            self.ready(pod, true).await?;
        }
        self.pass(name).await?;
        let table = self.table(name).await;
        let refs: Vec<&str> = pods.iter().map(String::as_str).collect();
        self.nodes.applied(&refs, &table, true);
        self.pass(name).await?;
        Ok(self.table(name).await)
    }

    async fn event_objects(&self, name: &str) -> TestResult<Vec<Event>> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), NS);
        let mut events: Vec<Event> = events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            // The cluster's own: the real StatefulSet, disruption and endpoint controllers
            // publish events on the children that share its name.
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some("ChatCluster") && r.name.as_deref() == Some(name)
                })
            })
            .collect();
        // Oldest first: an event's time is set once, when it is first published (a repeat
        // becomes a series on the same event).
        events.sort_by(|a, b| {
            let at = |e: &Event| e.event_time.as_ref().map(|t| t.0);
            at(a)
                .cmp(&at(b))
                .then_with(|| a.name_any().cmp(&b.name_any()))
        });
        Ok(events)
    }

    /// Event (reason, note) published on the ChatCluster `name`, oldest first.
    pub async fn events(&self, name: &str) -> TestResult<Vec<(String, String)>> {
        Ok(self
            .event_objects(name)
            .await?
            .into_iter()
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect())
    }
}

/// Every child of cluster `name`, by kubectl-style resource and name.
pub fn children(name: &str) -> [(&'static str, String); 9] {
    [
        ("statefulsets.apps", name.to_owned()),
        ("services", name.to_owned()),
        ("services", format!("{name}-peers")),
        ("configmaps", format!("{name}-assignments")),
        ("secrets", format!("{name}-peer-key")),
        ("poddisruptionbudgets.policy", name.to_owned()),
        ("serviceaccounts", format!("{name}-node")),
        ("roles.rbac.authorization.k8s.io", format!("{name}-node")),
        (
            "rolebindings.rbac.authorization.k8s.io",
            format!("{name}-node"),
        ),
    ]
}

/// The API resource kubectl calls `resource`.
fn api_resource(resource: &str) -> TestResult<ApiResource> {
    Ok(match resource {
        "statefulsets.apps" => ApiResource::erase::<StatefulSet>(&()),
        "services" => ApiResource::erase::<Service>(&()),
        "configmaps" => ApiResource::erase::<ConfigMap>(&()),
        "secrets" => ApiResource::erase::<Secret>(&()),
        "poddisruptionbudgets.policy" => ApiResource::erase::<PodDisruptionBudget>(&()),
        "serviceaccounts" => ApiResource::erase::<ServiceAccount>(&()),
        "roles.rbac.authorization.k8s.io" => ApiResource::erase::<Role>(&()),
        "rolebindings.rbac.authorization.k8s.io" => ApiResource::erase::<RoleBinding>(&()),
        "ingresses.networking.k8s.io" => ApiResource::erase::<Ingress>(&()),
        "pods" => ApiResource::erase::<Pod>(&()),
        "chatclusters.roomshard.dev" => ApiResource::erase::<ChatCluster>(&()),
        other => return Err(format!("unknown resource {other}").into()),
    })
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

/// A child as the operator wrote it: everything but `status` (other controllers' to write),
/// the resourceVersion (which their writes move) and other managers' managedFields entries.
fn as_operator_wrote(mut object: Value) -> String {
    if let Some(o) = object.as_object_mut() {
        o.remove("status");
    }
    if let Some(meta) = object["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
        if let Some(Value::Array(entries)) = meta.get_mut("managedFields") {
            entries.retain(|e| e["manager"] == FIELD_MANAGER);
        }
    }
    object.to_string()
}
