//! What kube-proxy does for a Service, for tests on a machine without it: a listener on
//! loopback that sends each new connection to one of the Service's ready endpoints, read from
//! its EndpointSlices as they change, round-robin.
//!
//! Tests and load generators reach a Service the way a client in a cluster does, through
//! whichever pods are ready now, without knowing pod addresses.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// A running proxy for one Service port. Dropping it stops it.
#[derive(Debug)]
pub struct ServiceProxy {
    /// Where to connect: `127.0.0.1:PORT`.
    pub addr: SocketAddr,
    endpoints: Arc<Mutex<Vec<SocketAddr>>>,
    stop: CancellationToken,
}

impl ServiceProxy {
    /// Proxies `namespace/service`'s port named `port_name` (the endpoints' port of that name;
    /// an empty name takes the first port).
    ///
    /// # Errors
    ///
    /// When no loopback port can be had.
    pub async fn start(
        client: Client,
        namespace: &str,
        service: &str,
        port_name: &str,
    ) -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(Error::io("bind service proxy"))?;
        let addr = listener
            .local_addr()
            .map_err(Error::io("service proxy address"))?;
        let endpoints = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let api: Api<EndpointSlice> = Api::namespaced(client, namespace);
        let config =
            watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
        tokio::spawn(follow(
            api,
            config,
            port_name.to_owned(),
            endpoints.clone(),
            stop.clone(),
        ));
        tokio::spawn(accept(listener, endpoints.clone(), stop.clone()));
        Ok(ServiceProxy {
            addr,
            endpoints,
            stop,
        })
    }

    /// The ready endpoints now.
    #[must_use]
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.endpoints.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl Drop for ServiceProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Keeps `endpoints` equal to the ready addresses of every slice of the Service.
async fn follow(
    api: Api<EndpointSlice>,
    config: watcher::Config,
    port_name: String,
    endpoints: Arc<Mutex<Vec<SocketAddr>>>,
    stop: CancellationToken,
) {
    let mut slices: std::collections::BTreeMap<String, Vec<SocketAddr>> = Default::default();
    let mut stream = watcher::watcher(api, config).boxed();
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            e = stream.next() => e,
        };
        let Some(Ok(event)) = event else {
            if event.is_none() {
                return;
            }
            continue;
        };
        match event {
            Event::Init => slices.clear(),
            Event::InitApply(s) | Event::Apply(s) => {
                let name = s.metadata.name.clone().unwrap_or_default();
                slices.insert(name, ready(&s, &port_name));
            }
            Event::Delete(s) => {
                slices.remove(&s.metadata.name.unwrap_or_default());
            }
            Event::InitDone => {}
        }
        if let Ok(mut e) = endpoints.lock() {
            *e = slices.values().flatten().copied().collect();
        }
    }
}

/// The slice's ready, non-terminating endpoints on the named port.
fn ready(slice: &EndpointSlice, port_name: &str) -> Vec<SocketAddr> {
    let Some(port) = slice
        .ports
        .iter()
        .flatten()
        .find(|p| port_name.is_empty() || p.name.as_deref() == Some(port_name))
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
    else {
        return Vec::new();
    };
    slice
        .endpoints
        .iter()
        .filter(|e| {
            let c = e.conditions.as_ref();
            c.and_then(|c| c.ready).unwrap_or(true)
                && !c.and_then(|c| c.terminating).unwrap_or(false)
        })
        .flat_map(|e| e.addresses.iter())
        .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

async fn accept(
    listener: TcpListener,
    endpoints: Arc<Mutex<Vec<SocketAddr>>>,
    stop: CancellationToken,
) {
    let mut next = 0usize;
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((mut inbound, _)) = accepted else {
            continue;
        };
        let target = endpoints
            .lock()
            .ok()
            .and_then(|e| (!e.is_empty()).then(|| e[next % e.len()]));
        next = next.wrapping_add(1);
        let Some(target) = target else {
            // No ready endpoint: refuse, as a Service with no endpoints does.
            continue;
        };
        let stop = stop.clone();
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            tokio::select! {
                () = stop.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
            }
        });
    }
}
