//! Starting and stopping the server, and what tests get from a running one: its URL, a kube
//! `Client` pointed at it, a kubeconfig for kubectl, and the store behind it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::http::{AppState, router};
use crate::store::Store;

/// Configuration of an in-memory API server; [`ApiServer::start`] is the short way.
#[derive(Debug, Clone)]
pub struct ApiServer {
    store: Store,
    bookmark_interval: Duration,
}

impl Default for ApiServer {
    fn default() -> Self {
        ApiServer {
            store: Store::new(),
            bookmark_interval: Duration::from_secs(1),
        }
    }
}

impl ApiServer {
    /// A server with an empty store and one-second watch bookmarks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves an existing store (for example one a test pre-filled).
    pub fn with_store(mut self, store: Store) -> Self {
        self.store = store;
        self
    }

    /// How often an idle watch that allows bookmarks gets one.
    pub fn bookmark_interval(mut self, every: Duration) -> Self {
        self.bookmark_interval = every;
        self
    }

    /// Binds `listen` (use `127.0.0.1:0` in tests) and serves with the default configuration.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn start(listen: SocketAddr) -> Result<RunningServer> {
        Self::new().serve(listen).await
    }

    /// Binds `listen` and serves this configuration in a background task.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn serve(self, listen: SocketAddr) -> Result<RunningServer> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let state = AppState {
            store: self.store.clone(),
            shutdown: shutdown.clone(),
            bookmark_interval: self.bookmark_interval,
            address: addr.to_string(),
        };
        let app = router(state);
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        });
        tracing::info!(%addr, "memkube serving");
        Ok(RunningServer {
            addr,
            store: self.store,
            shutdown,
            task,
        })
    }
}

/// A server that is serving; dropping it leaves it running until the runtime ends, so call
/// [`RunningServer::shutdown`] to stop it and wait for its connections to close.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    store: Store,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The store behind the server, for reads and writes without HTTP.
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// A kube client for this server: plain HTTP, no auth, default namespace `default`.
    ///
    /// # Errors
    /// When kube cannot build a client (it must be called inside a tokio runtime).
    pub fn client(&self) -> Result<kube::Client> {
        let uri = self
            .url()
            .parse()
            .map_err(|e| Error::Other(format!("bad url: {e}")))?;
        let config = kube::Config::new(uri);
        Ok(kube::Client::try_from(config)?)
    }

    /// A kubeconfig document (YAML) with one context, `memkube`, for this server.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: memkube\n  cluster:\n    server: {}\nusers:\n- name: memkube\n  user: {{}}\ncontexts:\n- name: memkube\n  context:\n    cluster: memkube\n    user: memkube\n    namespace: default\ncurrent-context: memkube\n",
            self.url()
        )
    }

    /// Writes [`RunningServer::kubeconfig`] to `path`, for `kubectl --kubeconfig`.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> Result<()> {
        std::fs::write(path, self.kubeconfig())?;
        Ok(())
    }

    /// Stops accepting, ends every watch, and waits for open connections to finish.
    ///
    /// # Errors
    /// When the server task failed.
    pub async fn shutdown(self) -> Result<()> {
        self.shutdown.cancel();
        match self.task.await {
            Ok(served) => Ok(served?),
            Err(e) => Err(Error::Other(format!("server task: {e}"))),
        }
    }
}
