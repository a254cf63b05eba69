//! Optional before/after reads of the nodes' Prometheus `/metrics`, so a run can show what
//! the servers counted (slow consumers closed, queue drops, messages in) next to what the
//! clients saw. One plain HTTP/1.0 GET per node over loopback: not worth an HTTP client.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::args::HttpTarget;

/// Longest a scrape may take; a node too busy to answer is reported, not waited for.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest `/metrics` body read; ours are a few KiB.
const MAX_BODY: u64 = 1 << 20;

/// Every sample of every target, summed by series (`name{labels}`).
///
/// # Errors
/// A message naming the target that could not be read.
pub async fn scrape_all(targets: &[HttpTarget]) -> Result<BTreeMap<String, f64>, String> {
    let mut total = BTreeMap::new();
    for target in targets {
        let body = tokio::time::timeout(SCRAPE_TIMEOUT, get(target))
            .await
            .map_err(|_| format!("{}{}: timed out", target.authority, target.path))?
            .map_err(|e| format!("{}{}: {e}", target.authority, target.path))?;
        for (series, value) in parse_samples(&body) {
            *total.entry(series).or_insert(0.0) += value;
        }
    }
    Ok(total)
}

/// What grew between two scrapes (counters' increase, gauges' change), non-zero only.
pub fn delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(series, value)| {
            let change = value - before.get(series).copied().unwrap_or(0.0);
            (change != 0.0).then(|| (series.clone(), change))
        })
        .collect()
}

async fn get(target: &HttpTarget) -> Result<String, String> {
    let mut stream = TcpStream::connect(&target.authority)
        .await
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n",
        target.path, target.authority
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .take(MAX_BODY)
        .read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("malformed http response")?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("answered `{status}`"));
    }
    Ok(body.to_owned())
}

/// `series value` lines of the Prometheus text format; comments and odd lines are skipped.
fn parse_samples(body: &str) -> impl Iterator<Item = (String, f64)> + '_ {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.trim().rsplit_once(' ')?;
            Some((series.trim().to_owned(), value.parse().ok()?))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_and_deltas_keep_only_changes() {
        let before: BTreeMap<_, _> = parse_samples(
            "# HELP a x\n# TYPE a counter\na 1\nb{code=\"x\"} 2\nc 5\nnot a sample\n",
        )
        .collect();
        let after: BTreeMap<_, _> = parse_samples("a 4\nb{code=\"x\"} 2\nc 3\nd 1\n").collect();
        let change = delta(&before, &after);
        assert_eq!(
            change.into_iter().collect::<Vec<_>>(),
            vec![("a".into(), 3.0), ("c".into(), -2.0), ("d".into(), 1.0)]
        );
    }
}
