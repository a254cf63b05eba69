//! Leader election with a `coordination.k8s.io/v1` Lease, so that two operator replicas are
//! safe: only the holder of the Lease reconciles.
//!
//! # Flow
//!
//! [`Elector::try_acquire_or_renew`] is one step: create the Lease if there is none; renew it
//! if we hold it; take it over if its holder let it expire (`renewTime` +
//! `leaseDurationSeconds` in the past) or released it. Every write is a replace conditioned on
//! the `resourceVersion` read, so of two candidates racing only one wins (the other gets 409).
//! [`lead`] loops: wait as a candidate, run the leader's work with a cancellation token while
//! renewing, cancel it as soon as a renewal is lost or fails for longer than the renew
//! deadline, and on shutdown stop the work first, then release the Lease so a standby takes
//! over at once instead of after expiry.
//!
//! # Guarantees and caveats
//!
//! - At most one holder at a time as far as the API server is concerned. A leader that loses
//!   the Lease stops its work within [`LeaseConfig::renew_deadline`]; a standby takes over only
//!   after [`LeaseConfig::lease_duration`], which must be longer, so their work overlaps only if
//!   the clocks of the two replicas disagree by more than the difference (the same caveat as
//!   client-go's leader election). The reconciler tolerates that overlap (see
//!   [`super::reconcile`]'s assumptions).

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio_util::sync::CancellationToken;

use crate::Error;

/// Which Lease, who we are, and the timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease is valid after its last renewal.
    pub lease_duration: Duration,
    /// A leader that could not renew for this long stops leading (shorter than the duration).
    pub renew_deadline: Duration,
    /// How often a leader renews and a candidate retries.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Default timing (15 s lease, 10 s renew deadline, 2 s retry) for `identity`.
    pub fn new(namespace: &str, name: &str, identity: &str) -> LeaseConfig {
        LeaseConfig {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// One candidate for the Lease.
#[derive(Debug, Clone)]
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
}

impl Elector {
    /// A candidate with `config`.
    pub fn new(client: Client, config: LeaseConfig) -> Elector {
        Elector {
            api: Api::namespaced(client, &config.namespace),
            config,
        }
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &str {
        &self.config.identity
    }

    /// One election step: true when we hold the Lease afterwards.
    ///
    /// # Errors
    ///
    /// [`Error::Kube`] when the API server cannot be read or written (a lost race is `false`,
    /// not an error).
    pub async fn try_acquire_or_renew(&self) -> Result<bool, Error> {
        let now = Timestamp::now();
        let me = &self.config.identity;
        let duration = i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return won(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        if holder.as_deref() != Some(me.as_str()) {
            let expires = spec.renew_time.as_ref().map(|t| {
                let valid = spec.lease_duration_seconds.unwrap_or(duration);
                t.0 + Duration::from_secs(u64::try_from(valid).unwrap_or(0))
            });
            let free = holder.is_none() || expires.is_none_or(|e| e < now);
            if !free {
                return Ok(false);
            }
            spec.holder_identity = Some(me.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(duration);
        // `replace` sends the resourceVersion we read: a concurrent writer makes it fail (409).
        won(self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await)
    }

    /// Releases the Lease if we hold it, so another candidate can take it at once.
    ///
    /// # Errors
    ///
    /// [`Error::Kube`] when the API server cannot be read or written.
    pub async fn step_down(&self) -> Result<(), Error> {
        // A write that lost a race (409) is tried again on a fresh read, a few times: a leader
        // that leaves without releasing makes every standby wait out the lease duration.
        for _ in 0..3 {
            let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
                return Ok(());
            };
            let Some(spec) = lease.spec.as_mut() else {
                return Ok(());
            };
            if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.renew_time = None;
            if won(self
                .api
                .replace(&self.config.name, &PostParams::default(), &lease)
                .await)?
            {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// `Ok(true)` for a successful write, `Ok(false)` for a lost race, the error otherwise.
fn won<T>(result: Result<T, kube::Error>) -> Result<bool, Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Runs `work` while this replica leads, until `shutdown` (see the module doc). `work` gets a
/// token that is cancelled when leadership ends and must return soon after.
pub async fn lead<F, Fut>(elector: Elector, shutdown: CancellationToken, mut work: F)
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let retry = elector.config.retry_period;
    loop {
        // Candidate. A replica that is shutting down never takes the Lease (again): its work
        // may have ended a moment before the shutdown was seen.
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match elector.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the lease"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(retry) => {}
            }
        }
        tracing::info!(identity = elector.identity(), "became the leader");
        let stop = shutdown.child_token();
        let mut running = tokio::spawn(work(stop.clone()));
        let mut last_renewed = tokio::time::Instant::now();
        // Leader.
        let mut ended = None;
        let shutting_down = loop {
            tokio::select! {
                // Shutdown first: when the work ends because of it, this is still a shutdown.
                biased;
                () = shutdown.cancelled() => break true,
                result = &mut running => {
                    ended = Some(result);
                    break false;
                }
                () = tokio::time::sleep(retry) => {}
            }
            match elector.try_acquire_or_renew().await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::warn!(identity = elector.identity(), "lost the lease");
                    break false;
                }
                Err(e) if last_renewed.elapsed() < elector.config.renew_deadline => {
                    tracing::warn!(error = %e, "cannot renew the lease; retrying");
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot renew the lease before the deadline");
                    break false;
                }
            }
        };
        // The work stops when the shutdown cancels its token, and may win the race to be seen.
        let shutting_down = shutting_down || shutdown.is_cancelled();
        stop.cancel();
        let result = match ended {
            Some(result) => result,
            None => running.await,
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "the leader's work failed");
        }
        if shutting_down {
            match elector.step_down().await {
                Ok(()) => tracing::info!(identity = elector.identity(), "released the lease"),
                Err(e) => tracing::warn!(error = %e, "cannot release the lease"),
            }
            return;
        }
        tracing::info!(identity = elector.identity(), "stopped leading");
    }
}
