//! memkube: an in-memory Kubernetes API server for tests (dev-only, never shipped).
//!
//! It speaks real HTTP with the API's semantics, so the real `kube` client (typed `Api`,
//! `watcher`, `Controller`, server-side apply) and a real `kubectl` work against it, and
//! roomshard's operator can be tested end to end on a machine without a cluster.
//!
//! ```no_run
//! # async fn demo() -> memkube::Result<()> {
//! let server = memkube::ApiServer::start("127.0.0.1:0".parse().map_err(|e| memkube::Error::Other(format!("{e}")))?).await?;
//! let client = server.client()?;            // a kube::Client for http://127.0.0.1:PORT
//! server.write_kubeconfig("/tmp/kubeconfig")?; // for kubectl --kubeconfig
//! server.store().set_pod_ready("default", "web-0", true).ok(); // act as the kubelet
//! # drop(client);
//! server.shutdown().await
//! # }
//! ```
//!
//! The layers, from the wire down:
//! - [`server`]: start/stop, client, kubeconfig.
//! - `http`: URL space and verbs; `discovery` and `table`: documents kubectl asks for;
//!   `watch`: streaming changes.
//! - `ops`: the write pipeline; `apply` and `fieldset`: server-side apply and managedFields;
//!   `merge`: merge, JSON and strategic patches; `gc`: finalizers and garbage collection;
//!   `schema` and `rules`: custom-resource validation; `crd`: CRDs themselves.
//! - [`store`]: objects, resourceVersions, history; `direct`: its in-process API for tests.
//! - `resources`, `selector`, [`error`]: the vocabulary.
//!
//! What is simplified or left out is listed in each module's docs and in the crate README.

mod apply;
mod crd;
mod direct;
mod discovery;
pub mod error;
mod fieldset;
mod gc;
mod http;
mod merge;
mod ops;
mod resources;
mod rules;
mod schema;
mod selector;
pub mod server;
pub mod store;
mod table;
mod watch;

pub use error::{ApiError, Cause, Error, Result};
pub use resources::GroupResource;
pub use server::{ApiServer, RunningServer};
pub use store::{Event, EventKind, Store};
