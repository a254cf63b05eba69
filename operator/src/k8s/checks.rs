//! What the schema cannot refuse: checks of a `ChatCluster` spec that need more than one field
//! or a parser, done by the controller before it touches any child.
//!
//! A spec that fails here gets a `Degraded` condition with [`check`]'s message and no change to
//! its children: the running cluster keeps running as it was until the spec is fixed.

use std::time::Duration;

use super::crd::{AuthMode, AutoscalingSpec, ChatClusterSpec, SecretKeyRef};
use crate::autoscale::{Policy, Targets};

/// A spec that passed [`check`], with its values in the types the controller uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// `spec.replicas`.
    pub replicas: u32,
    /// `spec.shards`.
    pub shards: u32,
    /// `spec.handoffTimeout`, parsed.
    pub handoff_timeout: Duration,
    /// `spec.replication`: copies of every shard's rooms, 1 or 2 (what the planner gets).
    pub replication: u8,
    /// The token signing key, when authentication is on.
    pub auth_key: Option<SecretKeyRef>,
    /// `spec.autoscaling` as the autoscaler's policy, when set.
    pub autoscaling: Option<Policy>,
}

/// Checks `spec`; the error is a sentence for the Degraded condition.
///
/// # Errors
///
/// A message naming the field and what is wrong with it.
pub fn check(spec: &ChatClusterSpec) -> Result<Checked, String> {
    let replicas = u32::try_from(spec.replicas)
        .map_err(|_| format!("spec.replicas must not be negative (is {})", spec.replicas))?;
    let shards = u32::try_from(spec.shards)
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("spec.shards must be at least 1 (is {})", spec.shards))?;
    let handoff_timeout = humantime::parse_duration(&spec.handoff_timeout)
        .map_err(|e| format!("spec.handoffTimeout {:?}: {e}", spec.handoff_timeout))?;
    if handoff_timeout.is_zero() {
        return Err("spec.handoffTimeout must be longer than zero".into());
    }
    let replication = u8::try_from(spec.replication)
        .ok()
        .filter(|r| (1..=2).contains(r))
        .ok_or_else(|| format!("spec.replication must be 1 or 2 (is {})", spec.replication))?;
    let auth_key = match spec.auth.mode {
        AuthMode::Disabled => None,
        AuthMode::Token => Some(spec.auth.secret_ref.clone().ok_or_else(|| {
            "spec.auth.mode is Token but spec.auth.secretRef is missing: name the Secret key \
             that holds the token signing key"
                .to_owned()
        })?),
    };
    let autoscaling = spec.autoscaling.as_ref().map(policy).transpose()?;
    Ok(Checked {
        replicas,
        shards,
        handoff_timeout,
        replication,
        auth_key,
        autoscaling,
    })
}

/// `spec.autoscaling` as a [`Policy`]; the schema's bounds and CEL rules refuse most mistakes
/// first, this catches the rest (a spec written before the rules, or with them off).
fn policy(spec: &AutoscalingSpec) -> Result<Policy, String> {
    let count = |field: &str, value: i32| {
        u32::try_from(value)
            .map_err(|_| format!("spec.autoscaling.{field} must not be negative (is {value})"))
    };
    let target = |field: &str, value: Option<i64>| {
        value
            .map(|v| {
                u64::try_from(v).map_err(|_| {
                    format!("spec.autoscaling.targets.{field} must be above 0 (is {v})")
                })
            })
            .transpose()
    };
    let window = |field: &str, text: &str| {
        humantime::parse_duration(text)
            .map_err(|e| format!("spec.autoscaling.{field} {text:?}: {e}"))
    };
    let policy = Policy {
        min: count("minReplicas", spec.min_replicas)?,
        max: count("maxReplicas", spec.max_replicas)?,
        targets: Targets {
            connections_per_pod: target("connectionsPerPod", spec.targets.connections_per_pod)?,
            deliveries_per_sec_per_pod: target(
                "deliveriesPerSecPerPod",
                spec.targets.deliveries_per_sec_per_pod,
            )?,
        },
        scale_up_window: window("scaleUpStabilization", &spec.scale_up_stabilization)?,
        scale_down_window: window("scaleDownStabilization", &spec.scale_down_stabilization)?,
        max_step: count("maxStep", spec.max_step)?,
        ..Policy::new(1, 1, Targets::default())
    };
    policy.validate().map_err(|e| format!("spec.{e}"))?;
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: serde_json::Value) -> ChatClusterSpec {
        serde_json::from_value(value).expect("test spec")
    }

    #[test]
    fn a_default_spec_passes_with_its_timeout_parsed() {
        let checked = check(&spec(json!({"replicas": 3}))).expect("valid");
        assert_eq!(checked.replicas, 3);
        assert_eq!(checked.shards, 256);
        assert_eq!(checked.handoff_timeout, Duration::from_secs(30));
        assert_eq!(checked.auth_key, None);
        assert_eq!(checked.replication, 2);
    }

    #[test]
    fn a_replication_other_than_one_or_two_that_slipped_past_the_schema_is_refused() {
        for bad in [0, 3, -1] {
            let err = check(&spec(json!({"replicas": 1, "replication": bad}))).expect_err("bad");
            assert!(err.contains("spec.replication must be 1 or 2"), "{err}");
        }
        let one = check(&spec(json!({"replicas": 1, "replication": 1}))).expect("valid");
        assert_eq!(one.replication, 1);
    }

    #[test]
    fn token_auth_without_a_secret_ref_is_refused_with_the_fields_named() {
        let err = check(&spec(json!({"replicas": 1, "auth": {"mode": "Token"}})))
            .expect_err("no secretRef");
        assert!(err.contains("spec.auth.secretRef is missing"), "{err}");
    }

    #[test]
    fn token_auth_with_a_secret_ref_passes() {
        let checked = check(&spec(json!({"replicas": 1, "auth": {"mode": "Token",
            "secretRef": {"name": "jwt", "key": "hs256"}}})))
        .expect("valid");
        assert_eq!(checked.auth_key.map(|k| k.name), Some("jwt".to_owned()));
    }

    #[test]
    fn compound_and_zero_timeouts_are_told_apart() {
        let ok = check(&spec(json!({"replicas": 1, "handoffTimeout": "1m30s"}))).expect("valid");
        assert_eq!(ok.handoff_timeout, Duration::from_secs(90));
        let err = check(&spec(json!({"replicas": 1, "handoffTimeout": "0s"}))).expect_err("zero");
        assert!(err.contains("longer than zero"));
    }

    #[test]
    fn an_autoscaling_spec_becomes_a_policy_with_its_windows_parsed() {
        let checked = check(&spec(
            json!({"replicas": 2, "autoscaling": {"minReplicas": 1,
            "maxReplicas": 5, "targets": {"connectionsPerPod": 100},
            "scaleDownStabilization": "30s"}}),
        ))
        .expect("valid");
        let policy = checked.autoscaling.expect("policy");
        assert_eq!((policy.min, policy.max, policy.max_step), (1, 5, 4));
        assert_eq!(policy.targets.connections_per_pod, Some(100));
        assert_eq!(policy.scale_up_window, Duration::ZERO);
        assert_eq!(policy.scale_down_window, Duration::from_secs(30));
    }

    #[test]
    fn an_autoscaling_spec_that_slipped_past_the_schema_is_refused_with_the_field_named() {
        for (autoscaling, field) in [
            (
                json!({"minReplicas": 3, "maxReplicas": 2, "targets": {"connectionsPerPod": 1}}),
                "spec.autoscaling.maxReplicas",
            ),
            (
                json!({"minReplicas": 1, "maxReplicas": 2, "targets": {}}),
                "spec.autoscaling.targets needs",
            ),
            (
                json!({"minReplicas": 1, "maxReplicas": 2, "targets": {"connectionsPerPod": -1}}),
                "spec.autoscaling.targets.connectionsPerPod",
            ),
        ] {
            let err =
                check(&spec(json!({"replicas": 1, "autoscaling": autoscaling}))).expect_err(field);
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn negative_replicas_that_slipped_past_the_schema_are_refused() {
        let err = check(&spec(json!({"replicas": -1}))).expect_err("negative");
        assert!(err.contains("spec.replicas"));
    }
}
