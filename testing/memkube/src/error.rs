//! Errors, in two shapes: [`Error`] for the crate's own fallible functions (starting the server,
//! writing a kubeconfig), and [`ApiError`] for an answer the API server gives a client.
//!
//! Every non-2xx answer of the real API server is a `meta/v1` `Status` object; kube parses it into
//! `kube::Error::Api`, and kubectl prints its `message`. [`ApiError`] renders exactly that shape so
//! callers can match on `reason` and `code` as they would against a real cluster.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The crate's error type for operations outside the HTTP API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listener could not be bound or served.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The kube client could not be built.
    #[error("kube client: {0}")]
    Kube(#[from] kube::Error),
    /// An in-process store operation was refused, as it would be over HTTP.
    #[error("api: {0}")]
    Api(#[from] ApiError),
    /// Anything else: a malformed URL or document.
    #[error("{0}")]
    Other(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One field-level problem, rendered as a `StatusCause`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, ...
    pub reason: String,
    /// The message without the field, e.g. `Invalid value: -1: ...`.
    pub message: String,
    /// The field path, e.g. `spec.replicas`.
    pub field: String,
}

impl Cause {
    /// `<field>: <message>`, as the Status message lists it.
    pub fn render(&self) -> String {
        if self.field.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.field, self.message)
        }
    }
}

/// A refusal by the API server: renders as a `Status` object with the matching HTTP code.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason} ({code}): {message}")]
pub struct ApiError {
    /// The HTTP status code (404, 409, 422, ...).
    pub code: u16,
    /// The machine-readable reason (`NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, ...).
    pub reason: &'static str,
    /// What a person reads.
    pub message: String,
    /// `details.name`, `details.group`, `details.kind`, when they are known.
    pub details: Option<Box<(String, String, String)>>,
    /// `details.causes` for validation failures.
    pub causes: Vec<Cause>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            causes: Vec::new(),
        }
    }

    /// 404: `<resource>.<group> "<name>" not found`.
    pub fn not_found(resource: &str, group: &str, name: &str) -> Self {
        let what = qualified(resource, group);
        Self::new(404, "NotFound", format!("{what} \"{name}\" not found"))
            .with_details(name, group, resource)
    }

    /// 404 for a path that names no served resource.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    /// 409 on create when the name is taken.
    pub fn already_exists(resource: &str, group: &str, name: &str) -> Self {
        let what = qualified(resource, group);
        Self::new(
            409,
            "AlreadyExists",
            format!("{what} \"{name}\" already exists"),
        )
        .with_details(name, group, resource)
    }

    /// 409 on update with a stale `resourceVersion`.
    pub fn conflict_stale(resource: &str, group: &str, name: &str) -> Self {
        let what = qualified(resource, group);
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {what} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        )
        .with_details(name, group, resource)
    }

    /// 409 on server-side apply when another manager owns a field with a different value.
    pub fn apply_conflict(conflicts: &[(String, String)]) -> Self {
        let n = conflicts.len();
        let plural = if n == 1 { "conflict" } else { "conflicts" };
        let lines: Vec<String> = conflicts
            .iter()
            .map(|(manager, field)| format!("- conflict with \"{manager}\": {field}"))
            .collect();
        let mut e = Self::new(
            409,
            "Conflict",
            format!("Apply failed with {n} {plural}: {}", lines.join("\n")),
        );
        e.causes = conflicts
            .iter()
            .map(|(manager, field)| Cause {
                reason: "FieldManagerConflict".into(),
                message: format!("conflict with \"{manager}\""),
                field: field.clone(),
            })
            .collect();
        e
    }

    /// 422: `<Kind>.<group> "<name>" is invalid: <field>: <message>, ...`.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> Self {
        let what = qualified(kind, group);
        let joined: Vec<String> = causes.iter().map(Cause::render).collect();
        let message = if joined.len() == 1 {
            format!("{what} \"{name}\" is invalid: {}", joined.join(""))
        } else {
            format!("{what} \"{name}\" is invalid: [{}]", joined.join(", "))
        };
        let mut e = Self::new(422, "Invalid", message).with_details(name, group, kind);
        e.causes = causes;
        e
    }

    /// 400 for a body or parameter the server cannot read.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 405 for a verb a resource does not serve.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    /// 410: the requested resourceVersion is older than the retained history.
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 415 for a patch content type the server does not know.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {content_type})"
            ),
        )
    }

    /// 415 for a request body that is not JSON or YAML (protobuf, CBOR).
    pub fn unsupported_body(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "memkube reads JSON or YAML request bodies only, not {content_type} (kubectl's generators such as `kubectl create configmap` send protobuf: use `kubectl apply -f` or `kubectl create -f`)"
            ),
        )
    }

    /// 500 for a bug in this server.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    fn with_details(mut self, name: &str, group: &str, kind: &str) -> Self {
        self.details = Some(Box::new((
            name.to_string(),
            group.to_string(),
            kind.to_string(),
        )));
        self
    }

    /// The `Status` object this error renders as.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        let mut details = serde_json::Map::new();
        if let Some(d) = &self.details {
            let (name, group, kind) = &**d;
            details.insert("name".into(), json!(name));
            if !group.is_empty() {
                details.insert("group".into(), json!(group));
            }
            details.insert("kind".into(), json!(kind));
        }
        if !self.causes.is_empty() {
            let causes: Vec<Value> = self
                .causes
                .iter()
                .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                .collect();
            details.insert("causes".into(), Value::Array(causes));
        }
        if !details.is_empty() {
            status["details"] = Value::Object(details);
        }
        status
    }
}

fn qualified(resource: &str, group: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, axum::Json(self.to_status())).into_response()
    }
}
