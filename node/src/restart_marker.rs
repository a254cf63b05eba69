//! Whether this process follows another that ran in the same pod.
//!
//! A crashed container is started again by the kubelet in its pod; the pod's `emptyDir`
//! volumes outlive the container, not the pod. A file the node writes there at start is
//! therefore found by the next process of the same pod and by no other: not by a fresh pod (a
//! new cluster, a scale-up, a pod replaced under the same name) and not by a node run by hand.
//! Only a process that finds it treats the roles the table gives its node as its predecessor's
//! (see `state/inherited.rs`).

use std::path::Path;

/// Notes this process's start in `marker`; true when a previous process of the same pod had
/// (the file was there). A marker that cannot be written is logged: the next process will not
/// know it is a restart.
pub fn note_start(marker: &Path) -> bool {
    let found = marker.exists();
    if let Err(e) = std::fs::write(marker, std::process::id().to_string()) {
        tracing::warn!(path = %marker.display(), error = %e, "cannot write the restart marker: a restart of this process will not be recognised");
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_process_finds_no_marker_and_the_next_one_does() {
        let dir = std::env::temp_dir().join(format!("roomshard-marker-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let marker = dir.join("started");
        let _ = std::fs::remove_file(&marker);
        assert!(!note_start(&marker), "a fresh pod");
        assert!(note_start(&marker), "a process restarted in the same pod");
        assert!(
            !note_start(&dir.join("missing-dir/started")),
            "unwritable: not a restart"
        );
        std::fs::remove_dir_all(&dir).expect("cleaned up");
    }
}
