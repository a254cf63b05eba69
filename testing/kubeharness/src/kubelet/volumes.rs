//! A pod's volumes, made as directories on the host and bound into the pod's mount namespace
//! at their `mountPath`s: `emptyDir`, `secret`, `configMap`, `downwardAPI`, and `projected`
//! (service-account token, the cluster CA from `kube-root-ca.crt`, the namespace), which is how
//! the ServiceAccount admission plugin gives every pod its API credentials.
//!
//! Service-account tokens come from the TokenRequest API, bound to the pod, requested with the
//! Node's own identity (the Node authorizer allows it only for pods bound to that Node), and are
//! renewed once 80 % of their lifetime has passed, as the kubelet does.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, ServiceAccount, Volume,
};
use kube::api::PostParams;
use kube::{Api, Client};

use super::env::{PodFacts, field};

/// The files of one volume, relative path to contents and mode.
type Files = Vec<(String, Vec<u8>, u32)>;

/// What preparing a pod's volumes gave: their directories, and when tokens need renewing.
#[derive(Debug)]
pub struct Prepared {
    /// Volume name to host directory.
    pub dirs: Vec<(String, PathBuf)>,
    /// When to write the volumes again (token renewal), if any holds a token.
    pub renew_after: Option<Duration>,
}

/// Writes every volume of `pod` under `root/NAME/`.
///
/// # Errors
///
/// A message naming the volume and what is missing; the kubelet keeps the pod waiting and tries
/// again, as it does on `FailedMount`.
pub async fn prepare(
    client: &Client,
    pod: &Pod,
    facts: &PodFacts,
    root: &Path,
) -> Result<Prepared, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let spec = pod.spec.as_ref().ok_or("pod has no spec")?;
    let fs_group = spec
        .security_context
        .as_ref()
        .and_then(|s| s.fs_group)
        .and_then(|g| u32::try_from(g).ok());
    let mut dirs = Vec::new();
    let mut renew_after: Option<Duration> = None;
    for volume in spec.volumes.iter().flatten() {
        let dir = root.join(&volume.name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("volume {}: {e}", volume.name))?;
        let (files, renew) = files_of(client, ns, pod, facts, volume).await?;
        if let Some(files) = files {
            write_files(&dir, &files, fs_group)
                .map_err(|e| format!("volume {}: {e}", volume.name))?;
        }
        if let Some(r) = renew {
            renew_after = Some(renew_after.map_or(r, |a| a.min(r)));
        }
        set_mode(
            &dir,
            if volume.empty_dir.is_some() {
                0o777
            } else {
                0o755
            },
            fs_group,
        )
        .map_err(|e| format!("volume {}: {e}", volume.name))?;
        dirs.push((volume.name.clone(), dir));
    }
    Ok(Prepared { dirs, renew_after })
}

/// The files of one volume (`None` for a plain directory) and when its token needs renewing.
async fn files_of(
    client: &Client,
    ns: &str,
    pod: &Pod,
    facts: &PodFacts,
    volume: &Volume,
) -> Result<(Option<Files>, Option<Duration>), String> {
    let name = &volume.name;
    if volume.empty_dir.is_some() {
        return Ok((None, None));
    }
    if let Some(s) = &volume.secret {
        let mode = mode(s.default_mode);
        let secret = secret_files(client, ns, s.secret_name.as_deref().unwrap_or_default()).await?;
        return match secret {
            Some(data) => Ok((Some(select(data, s.items.as_deref(), mode, name)?), None)),
            None if s.optional == Some(true) => Ok((Some(Vec::new()), None)),
            None => Err(format!("volume {name}: secret not found")),
        };
    }
    if let Some(c) = &volume.config_map {
        let mode = mode(c.default_mode);
        return match configmap_files(client, ns, &c.name).await? {
            Some(data) => Ok((Some(select(data, c.items.as_deref(), mode, name)?), None)),
            None if c.optional == Some(true) => Ok((Some(Vec::new()), None)),
            None => Err(format!("volume {name}: configmap {} not found", c.name)),
        };
    }
    if let Some(d) = &volume.downward_api {
        let mode = mode(d.default_mode);
        let files = downward(pod, facts, d.items.as_deref().unwrap_or_default(), mode)?;
        return Ok((Some(files), None));
    }
    if let Some(p) = &volume.projected {
        let mode = mode(p.default_mode);
        let mut files = Vec::new();
        let mut renew = None;
        for source in p.sources.iter().flatten() {
            if let Some(t) = &source.service_account_token {
                let (token, lifetime) =
                    token(client, pod, t.audience.as_deref(), t.expiration_seconds).await?;
                files.push((t.path.clone(), token.into_bytes(), mode));
                renew = Some(lifetime.mul_f64(0.8));
            }
            if let Some(c) = &source.config_map {
                match configmap_files(client, ns, &c.name).await? {
                    Some(data) => files.extend(select(data, c.items.as_deref(), mode, name)?),
                    None if c.optional == Some(true) => {}
                    None => return Err(format!("volume {name}: configmap {} not found", c.name)),
                }
            }
            if let Some(s) = &source.secret {
                match secret_files(client, ns, &s.name).await? {
                    Some(data) => files.extend(select(data, s.items.as_deref(), mode, name)?),
                    None if s.optional == Some(true) => {}
                    None => return Err(format!("volume {name}: secret {} not found", s.name)),
                }
            }
            if let Some(d) = &source.downward_api {
                files.extend(downward(
                    pod,
                    facts,
                    d.items.as_deref().unwrap_or_default(),
                    mode,
                )?);
            }
        }
        return Ok((Some(files), renew));
    }
    Err(format!(
        "volume {name}: only emptyDir, secret, configMap, downwardAPI and projected volumes run here"
    ))
}

fn mode(m: Option<i32>) -> u32 {
    m.and_then(|m| u32::try_from(m).ok()).unwrap_or(0o644)
}

async fn secret_files(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<Vec<(String, Vec<u8>)>>, String> {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| format!("secret {name}: {e}"))?;
    Ok(secret.map(|s| {
        let mut out: Vec<_> = s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        out.extend(
            s.string_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes())),
        );
        out
    }))
}

async fn configmap_files(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<Vec<(String, Vec<u8>)>>, String> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| format!("configmap {name}: {e}"))?;
    Ok(cm.map(|c| {
        let mut out: Vec<_> = c
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        out.extend(
            c.binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0)),
        );
        out
    }))
}

/// Every key as a file, or only the listed `items` at their paths.
fn select(
    data: Vec<(String, Vec<u8>)>,
    items: Option<&[KeyToPath]>,
    mode: u32,
    volume: &str,
) -> Result<Files, String> {
    let Some(items) = items else {
        return Ok(data.into_iter().map(|(k, v)| (k, v, mode)).collect());
    };
    items
        .iter()
        .map(|item| {
            let value = data
                .iter()
                .find(|(k, _)| *k == item.key)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| format!("volume {volume}: no key {:?}", item.key))?;
            let m = item
                .mode
                .and_then(|m| u32::try_from(m).ok())
                .unwrap_or(mode);
            Ok((item.path.clone(), value, m))
        })
        .collect()
}

fn downward(
    pod: &Pod,
    facts: &PodFacts,
    items: &[DownwardAPIVolumeFile],
    mode: u32,
) -> Result<Files, String> {
    items
        .iter()
        .filter_map(|item| {
            let m = item
                .mode
                .and_then(|m| u32::try_from(m).ok())
                .unwrap_or(mode);
            let f = item.field_ref.as_ref()?;
            Some(field(pod, facts, &f.field_path).map(|v| (item.path.clone(), v.into_bytes(), m)))
        })
        .collect()
}

/// A token for the pod's ServiceAccount, bound to the pod, and how long it lives.
async fn token(
    client: &Client,
    pod: &Pod,
    audience: Option<&str>,
    expiration: Option<i64>,
) -> Result<(String, Duration), String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".to_owned());
    let seconds = expiration.unwrap_or(3600).max(600);
    let request = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": audience.map(|a| vec![a]).unwrap_or_default(),
            "expirationSeconds": seconds,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                "name": pod.metadata.name, "uid": pod.metadata.uid},
        },
    });
    let api = Api::<ServiceAccount>::namespaced(client.clone(), ns);
    let answer: TokenRequest = api
        .create_subresource("token", &sa, &PostParams::default(), &request)
        .await
        .map_err(|e| format!("token for serviceaccount {sa}: {e}"))?;
    let token = answer
        .status
        .map(|s| s.token)
        .ok_or("token request answered no token")?;
    Ok((
        token,
        Duration::from_secs(u64::try_from(seconds).unwrap_or(600)),
    ))
}

fn write_files(dir: &Path, files: &Files, fs_group: Option<u32>) -> std::io::Result<()> {
    for (path, contents, mode) in files {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Write then rename, so a process reading the file never sees half a token.
        let partial = target.with_extension("partial");
        std::fs::write(&partial, contents)?;
        set_mode(&partial, *mode, fs_group)?;
        std::fs::rename(&partial, &target)?;
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32, fs_group: Option<u32>) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some(group) = fs_group {
        std::os::unix::fs::chown(path, None, Some(group))?;
    }
    Ok(())
}
