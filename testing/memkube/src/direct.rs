//! In-process access to the store for tests: read and write objects without HTTP, as a kubelet
//! or another controller would, through the same write pipeline (validation, resourceVersion,
//! generation, watch events, finalizers and garbage collection).
//!
//! Writes made here are privileged: they may change `status` through the main object, and they
//! are recorded in `managedFields` under the manager `memkube`.

use kube::Resource;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::{ApiError, Error, Result};
use crate::gc::{self, DeleteOpts};
use crate::ops::{self, Opts};
use crate::resources::GroupResource;
use crate::store::Store;

impl Store {
    /// One object as a typed kube resource, e.g. `store.get_typed::<Pod>("default", "web-0")`.
    pub fn get_typed<K>(&self, namespace: &str, name: &str) -> Option<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let gr = GroupResource::new(&K::group(&()), &K::plural(&()));
        let obj = self.lock().get(&gr, namespace, name).cloned()?;
        serde_json::from_value(obj).ok()
    }

    /// Creates an object from its JSON (which names `apiVersion` and `kind`).
    ///
    /// # Errors
    /// As over HTTP: unknown kind (404), name taken (409), invalid (422).
    pub fn create(&self, obj: Value) -> Result<Value> {
        let (api_version, kind) = (
            obj["apiVersion"].as_str().unwrap_or_default(),
            obj["kind"].as_str().unwrap_or_default(),
        );
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let mut st = self.lock();
        let ty = st
            .types
            .iter()
            .find(|t| t.group == group && t.version == version && t.kind == kind)
            .cloned()
            .ok_or_else(|| ApiError::no_route(&format!("{api_version} {kind}")))?;
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or(if ty.namespaced { "default" } else { "" })
            .to_string();
        Ok(ops::create(&mut st, &ty, &ns, obj, &Opts::privileged())?)
    }

    /// Changes an object with `f` and writes it back (status included).
    ///
    /// # Errors
    /// 404 when absent; 422 when the result is invalid.
    pub fn modify(
        &self,
        gr: &str,
        namespace: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Result<Value> {
        let ty = self.type_of(gr)?;
        let mut st = self.lock();
        let mut obj = st
            .get(&ty.group_resource(), namespace, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&ty.plural, &ty.group, name))?;
        f(&mut obj);
        Ok(ops::replace(
            &mut st,
            &ty,
            namespace,
            name,
            obj,
            false,
            &Opts::privileged(),
        )?)
    }

    /// Replaces an object's `status`, as a write to its `/status` subresource would.
    ///
    /// # Errors
    /// 404 when absent; 422 when the result is invalid.
    pub fn set_status(
        &self,
        gr: &str,
        namespace: &str,
        name: &str,
        status: Value,
    ) -> Result<Value> {
        let ty = self.type_of(gr)?;
        let mut st = self.lock();
        let mut obj = st
            .get(&ty.group_resource(), namespace, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&ty.plural, &ty.group, name))?;
        obj["status"] = status;
        Ok(ops::replace(
            &mut st,
            &ty,
            namespace,
            name,
            obj,
            ty.has_status,
            &Opts::privileged(),
        )?)
    }

    /// Acts as the kubelet: marks a pod Running and Ready (or not Ready), with a pod IP.
    ///
    /// # Errors
    /// 404 when the pod does not exist.
    pub fn set_pod_ready(&self, namespace: &str, name: &str, ready: bool) -> Result<Value> {
        let flag = if ready { "True" } else { "False" };
        let now = ops::now();
        let index = self.list("pods", None).len() % 250 + 2;
        let ip = self
            .get("pods", namespace, name)
            .and_then(|p| p["status"]["podIP"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("10.244.0.{index}"));
        let status = json!({
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "startTime": now,
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "Ready", "status": flag, "lastTransitionTime": now},
                {"type": "ContainersReady", "status": flag, "lastTransitionTime": now},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now}
            ]
        });
        self.set_status("pods", namespace, name, status)
    }

    /// Deletes an object as `DELETE` does (finalizers, then garbage collection of dependents).
    ///
    /// # Errors
    /// 404 when absent.
    pub fn delete(&self, gr: &str, namespace: &str, name: &str) -> Result<Value> {
        let gr = GroupResource::parse(gr);
        gc::delete(
            &mut self.lock(),
            &gr,
            namespace,
            name,
            &DeleteOpts::default(),
        )
        .map_err(Error::from)
    }
}
