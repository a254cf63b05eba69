//! The pass's writes to the cluster's children: the static children by server-side apply,
//! the StatefulSet's one-time switch to `OnDelete`, and the replacement of one outdated pod.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::Context;
use super::report::publish;
use crate::Error;
use crate::k8s::children::{self, FIELD_MANAGER, Owner};
use crate::k8s::crd::ChatCluster;
use crate::k8s::rollout;

/// Switches a StatefulSet created with `updateStrategy: RollingUpdate` to `OnDelete`, once.
///
/// A server-side apply of `{type: OnDelete}` alone would leave the API server's defaulted
/// `rollingUpdate.maxUnavailable` (owned by no manager) in place, which validation refuses
/// with `OnDelete`; a merge patch removes the whole `rollingUpdate`.
pub(super) async fn switch_to_on_delete(api: &Api<StatefulSet>, name: &str) -> Result<(), Error> {
    let patch = json!({"spec": {"updateStrategy": {"type": "OnDelete", "rollingUpdate": null}}});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch(name, &params, &Patch::Merge(&patch)).await?;
    tracing::info!(statefulset = name, "update strategy switched to OnDelete");
    Ok(())
}

/// Deletes `pod` (gracefully: it drains through its `deletionTimestamp`) so the StatefulSet
/// recreates it from the revision `update`, and publishes an event on it. True when this pass
/// deleted it; false when it was already gone or replaced by a newer pod of the same name.
pub(super) async fn replace_pod(
    ctx: &Context,
    api: &Api<Pod>,
    pod: &Pod,
    update: Option<&str>,
) -> Result<bool, Error> {
    let name = pod.name_any();
    let params = DeleteParams {
        // Only this pod, never a replacement that took its name meanwhile.
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
            tracing::debug!(pod = %name, error = %e, "pod to replace already gone");
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    }
    let old = pod
        .labels()
        .get(rollout::REVISION_LABEL)
        .map_or("?", String::as_str);
    let note = format!(
        "deleted to update it from revision {old} to {}: it hands its shards off, then the \
         StatefulSet recreates it",
        update.unwrap_or("?")
    );
    tracing::info!(pod = %name, from = old, to = update, "rollout: replacing pod");
    publish(
        ctx,
        &pod.object_ref(&()),
        &name,
        (EventType::Normal, "Reconcile"),
        ROLLOUT_REASON,
        &note,
    )
    .await;
    Ok(true)
}

/// The reason of the event on a pod the rollout deletes.
pub const ROLLOUT_REASON: &str = "RolloutReplacing";

/// Applies every child that does not depend on the table or the pods.
pub(super) async fn apply_static_children(
    ctx: &Context,
    cluster: &ChatCluster,
    owner: &Owner,
) -> Result<(), Error> {
    let client = &ctx.client;
    let ns = owner.namespace.as_str();
    let names = &owner.names;
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    apply(
        &sa,
        &names.node_access,
        &children::access::node_service_account(owner)?,
    )
    .await?;
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    apply(
        &roles,
        &names.node_access,
        &children::access::node_role(owner)?,
    )
    .await?;
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    let binding = children::access::node_role_binding(owner)?;
    apply(&bindings, &names.node_access, &binding).await?;

    // Generated once: applying a new random key on every pass would break every peer link.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    if secrets.get_opt(&names.secret).await?.is_none() {
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        match secrets
            .create(&params, &children::config::peer_secret(owner)?)
            .await
        {
            Ok(_) => tracing::info!(cluster = %owner.name, "created the peer-link secret"),
            // Another pass created it first; keep that one.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }

    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    apply(
        &services,
        &names.peers_service,
        &children::network::peers_service(owner)?,
    )
    .await?;
    let client_service = children::network::client_service(owner, &cluster.spec)?;
    apply(&services, &names.client_service, &client_service).await?;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    apply(
        &pdbs,
        &names.pdb,
        &children::config::disruption_budget(owner)?,
    )
    .await?;

    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), ns);
    match children::network::ingress(owner, &cluster.spec)? {
        Some(ingress) => {
            apply(&ingresses, &names.ingress, &ingress).await?;
        }
        None => {
            // Disabled after being enabled: remove ours, never someone else's.
            let ours = ingresses.get_opt(&names.ingress).await?.is_some_and(|i| {
                i.owner_references()
                    .iter()
                    .any(|r| r.uid == owner.reference.uid)
            });
            if ours {
                ingresses
                    .delete(&names.ingress, &Default::default())
                    .await?;
            }
        }
    }
    Ok(())
}

/// Server-side apply of `object` as `roomshard-operator`, taking over conflicting fields (the
/// operator is the authority on its children).
pub(super) async fn apply<K>(api: &Api<K>, name: &str, object: &K) -> Result<K, Error>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api.patch(name, &params, &Patch::Apply(object)).await?)
}
