//! `roomshard-bench` as a load during a test: started in the background, its JSON report read
//! when it ends.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

use crate::{TestResult, binary};

/// A running load.
#[derive(Debug)]
pub struct Load {
    child: Child,
}

impl Load {
    /// Starts `roomshard-bench` against `url` (a loopback address, e.g. a [`ServiceProxy`]'s)
    /// with `rooms` rooms of `users` users at `rate` messages per second per room for
    /// `duration`.
    ///
    /// [`ServiceProxy`]: kubeharness::service_proxy::ServiceProxy
    ///
    /// # Errors
    ///
    /// When it cannot start.
    pub fn start(url: &str, rooms: u32, users: u32, rate: f64, duration: &str) -> TestResult<Self> {
        let child = Command::new(binary("roomshard-bench"))
            .args([
                "--nodes",
                url,
                "--rooms",
                &rooms.to_string(),
                "--users",
                &users.to_string(),
            ])
            .args([
                "--rate",
                &rate.to_string(),
                "--duration",
                duration,
                "--warmup",
                "1s",
            ])
            .args(["--drain", "20s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        Ok(Load { child })
    }

    /// Waits for the report (at most `within`).
    ///
    /// # Errors
    ///
    /// On timeout or an unreadable report.
    pub async fn report(mut self, within: Duration) -> TestResult<Report> {
        let mut stdout = self.child.stdout.take().ok_or("no bench stdout")?;
        let text = tokio::time::timeout(within, async {
            let mut text = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut text).await?;
            let _ = self.child.wait().await;
            TestResult::Ok(text)
        })
        .await??;
        let json: Value = serde_json::from_str(text.lines().last().ok_or("no bench output")?)?;
        Ok(Report(json))
    }
}

/// The bench's JSON report.
#[derive(Debug, Clone)]
pub struct Report(pub Value);

impl Report {
    /// A counter of the report (0 when absent).
    #[must_use]
    pub fn count(&self, key: &str) -> u64 {
        self.0[key].as_u64().unwrap_or(0)
    }

    /// Clients that moved to another pod without leaving their rooms: told `reconnect`, they
    /// joined through the Service again before closing the old connection.
    #[must_use]
    pub fn moves_without_leaving(&self) -> u64 {
        self.0["handover_ms"]["count"].as_u64().unwrap_or(0)
    }

    /// All error answers, summed.
    #[must_use]
    pub fn errors(&self) -> u64 {
        self.0["errors"]
            .as_object()
            .map(|e| e.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0)
    }
}
