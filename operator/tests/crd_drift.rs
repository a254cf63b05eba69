//! `crds/chatcluster.yaml` is generated from the Rust types; this test fails when it drifts.

use std::path::PathBuf;

#[test]
fn the_committed_crd_yaml_is_what_the_types_generate() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds/chatcluster.yaml");
    let generated = operator::k8s::crd::crd_yaml().expect("the CRD serializes");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date with operator/src/k8s/crd.rs; regenerate it with\n    \
         cargo run -p operator --bin roomshard-operator -- crd > crds/chatcluster.yaml",
        path.display()
    );
}
