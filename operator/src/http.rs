//! A minimal HTTP/1.1 client for loopback: one request per connection (`Connection: close`),
//! the whole answer read into memory, bounded in size and time.
//!
//! The driver probes `/readyz`, reads `/status`, and the CLI talks to the admin port; none of
//! that needs pooling, TLS or redirects, so a few dozen lines beat a client library here.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Error;

/// The largest answer read, in bytes; a table of 1 Mi shards fits with room to spare.
pub const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

/// An HTTP answer: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code, e.g. 200.
    pub status: u16,
    /// The body, decoded from chunked encoding if needed.
    pub body: String,
}

impl Response {
    /// True for a 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// `GET http://{authority}{path}`, all within `timeout`.
///
/// # Errors
///
/// [`Error::Http`] when the connection fails, the answer is malformed or too large, or time
/// runs out.
pub async fn get(authority: &str, path: &str, timeout: Duration) -> Result<Response, Error> {
    request(authority, "GET", path, None, timeout).await
}

/// `POST http://{authority}{path}` with a JSON body, all within `timeout`.
///
/// # Errors
///
/// As for [`get`].
pub async fn post_json(
    authority: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<Response, Error> {
    request(authority, "POST", path, Some(body), timeout).await
}

/// Splits `http://host:port/base` into the authority (`host:port`) and the path (`/base`, or
/// empty). Only plain `http` is supported.
///
/// # Errors
///
/// [`Error::Config`] for another scheme or an empty authority.
pub fn split_url(url: &str) -> Result<(String, String), Error> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| Error::Config(format!("{url:?} is not an http:// url")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(Error::Config(format!("{url:?} has no host")));
    }
    Ok((
        authority.to_string(),
        path.trim_end_matches('/').to_string(),
    ))
}

async fn request(
    authority: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Response, Error> {
    let exchange = async {
        let mut stream = TcpStream::connect(authority)
            .await
            .map_err(|e| Error::Http(format!("cannot connect to {authority}: {e}")))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nAccept: application/json\r\n"
        );
        if let Some(body) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        head.push_str(body.unwrap_or(""));
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| Error::Http(format!("cannot send to {authority}: {e}")))?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE_BYTES + 1)
            .read_to_end(&mut raw)
            .await
            .map_err(|e| Error::Http(format!("cannot read from {authority}: {e}")))?;
        if raw.len() as u64 > MAX_RESPONSE_BYTES {
            return Err(Error::Http(format!(
                "the answer from {authority} is larger than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        parse_response(&raw)
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| {
        Error::Http(format!(
            "{method} http://{authority}{path} took longer than {timeout:?}"
        ))
    })?
}

/// Parses a complete HTTP/1.1 answer read until the server closed the connection.
fn parse_response(raw: &[u8]) -> Result<Response, Error> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| Error::Http("the answer has no end of headers".into()))?;
    let head = std::str::from_utf8(&raw[..split])
        .map_err(|_| Error::Http("the answer's headers are not utf-8".into()))?;
    let mut body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| Error::Http(format!("bad status line {status_line:?}")))?;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("transfer-encoding") && value.contains("chunked") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            let len: usize = value
                .parse()
                .map_err(|_| Error::Http(format!("bad content-length {value:?}")))?;
            body = body.get(..len).ok_or_else(|| {
                Error::Http("the connection closed before the whole body arrived".into())
            })?;
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    let body = String::from_utf8(body)
        .map_err(|_| Error::Http("the answer's body is not utf-8".into()))?;
    Ok(Response { status, body })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, Error> {
    let bad = || Error::Http("bad chunked encoding".to_string());
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|_| bad())?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad())?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).ok_or_else(bad)?);
        data = data.get(size + 2..).ok_or_else(bad)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_answer_is_cut_at_its_content_length() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokjunk";
        let r = parse_response(raw).expect("valid answer");
        assert_eq!(
            r,
            Response {
                status: 200,
                body: "ok".into()
            }
        );
    }

    #[test]
    fn a_chunked_answer_is_reassembled() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let r = parse_response(raw).expect("valid answer");
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "abcde");
    }

    #[test]
    fn a_truncated_answer_is_an_error() {
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nok").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn urls_split_into_authority_and_path() {
        let split = |u| split_url(u).ok();
        assert_eq!(
            split("http://127.0.0.1:7700"),
            Some(("127.0.0.1:7700".into(), String::new()))
        );
        assert_eq!(
            split("http://127.0.0.1:7700/table"),
            Some(("127.0.0.1:7700".into(), "/table".into()))
        );
        assert_eq!(
            split("http://localhost:1/"),
            Some(("localhost:1".into(), String::new()))
        );
        assert_eq!(split("https://x"), None);
        assert_eq!(split("http:///x"), None);
    }
}
