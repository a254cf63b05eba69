//! The HTTP front: parses the API's URL space, picks the verb, renders answers.
//!
//! `/api/v1/...` and `/apis/{group}/{version}/...` are resolved against the live registry:
//! `{plural}`, `{plural}/{name}`, `{plural}/{name}/status`, and the same under
//! `namespaces/{ns}/`. Everything else is discovery, health or a 404 `Status`.

use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::discovery;
use crate::error::ApiError;
use crate::gc::{self, DeleteOpts};
use crate::ops::{self, Opts, PatchKind};
use crate::resources::ResourceType;
use crate::schema::UnknownFields;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::Store;
use crate::table;
use crate::watch::{self, WatchParams, WatchTarget};

/// What every request handler shares.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub store: Store,
    pub shutdown: CancellationToken,
    pub bookmark_interval: Duration,
    pub address: String,
}

/// The router: one fallback that does its own path parsing (the URL space is data-driven).
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .fallback(dispatch)
        .layer(DefaultBodyLimit::max(32 * 1024 * 1024))
        .with_state(state)
}

struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

struct Target {
    ty: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

async fn dispatch(
    State(app): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    tracing::debug!(%method, %uri, "request");
    match handle(&app, &method, &uri, &headers, &body) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%method, %uri, code = e.code, message = %e.message, "refused");
            e.into_response()
        }
    }
}

fn handle(
    app: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let query = Query(
        serde_urlencoded::from_str(uri.query().unwrap_or_default())
            .map_err(|e| ApiError::bad_request(format!("bad query: {e}")))?,
    );
    let segs: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let types = app.store.lock().types.clone();
    let ok = |v: Value| Ok(json_response(StatusCode::OK, &v));
    let not_found = || ApiError::no_route(uri.path());
    match segs.as_slice() {
        ["version"] => ok(discovery::version()),
        ["healthz" | "readyz" | "livez"] => Ok((StatusCode::OK, "ok").into_response()),
        ["openapi", "v3"] => ok(discovery::openapi_v3_root(&types)),
        ["openapi", "v3", "api", version] => {
            discovery::openapi_v3_group_version(&types, "", version)
                .map(json_ok)
                .ok_or_else(not_found)
        }
        ["openapi", "v3", "apis", group, version] => {
            discovery::openapi_v3_group_version(&types, group, version)
                .map(json_ok)
                .ok_or_else(not_found)
        }
        ["api"] => ok(discovery::core_versions(&app.address)),
        ["apis"] => ok(discovery::group_list(&types)),
        ["apis", group] => discovery::group(&types, group)
            .map(json_ok)
            .ok_or_else(not_found),
        ["api", "v1", rest @ ..] => {
            resource(app, method, uri, headers, body, &query, "", "v1", rest)
        }
        ["apis", group, version, rest @ ..] => resource(
            app, method, uri, headers, body, &query, group, version, rest,
        ),
        _ => Err(not_found()),
    }
}

fn json_ok(v: Value) -> Response {
    json_response(StatusCode::OK, &v)
}

#[allow(clippy::too_many_arguments)]
fn resource(
    app: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    query: &Query,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<Response, ApiError> {
    let not_found = || ApiError::no_route(uri.path());
    let (plural, namespace, name, sub) = match rest {
        [] => {
            let types = app.store.lock().types.clone();
            return discovery::resource_list(&types, group, version)
                .map(json_ok)
                .ok_or_else(not_found);
        }
        [r] => (*r, None, None, None),
        ["namespaces", ns, r] if !matches!(*r, "status" | "finalize") => {
            (*r, Some(*ns), None, None)
        }
        [r, name] => (*r, None, Some(*name), None),
        [r, name, sub] => (*r, None, Some(*name), Some(*sub)),
        ["namespaces", ns, r, name] => (*r, Some(*ns), Some(*name), None),
        ["namespaces", ns, r, name, sub] => (*r, Some(*ns), Some(*name), Some(*sub)),
        _ => return Err(not_found()),
    };
    let ty = app
        .store
        .lock()
        .find(group, version, plural)
        .cloned()
        .ok_or_else(not_found)?;
    if (!ty.namespaced && namespace.is_some())
        || (ty.namespaced && namespace.is_none() && name.is_some())
    {
        return Err(not_found());
    }
    let status = match sub {
        None => false,
        Some("status") if ty.has_status => true,
        Some(_) => return Err(not_found()),
    };
    let t = Target {
        ty,
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
        status,
    };
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let opts = write_opts(query, headers);
    let ns = t.namespace.clone().unwrap_or_default();
    let store = &app.store;
    let gr = t.ty.group_resource();
    match (method.clone(), t.name.clone()) {
        (Method::GET, None) if query.flag("watch") => {
            watch_response(app, t, query, table::wanted(accept))
        }
        (Method::GET, None) => {
            let list = list(store, &t, query)?;
            if table::wanted(accept) {
                let items = list["items"].as_array().cloned().unwrap_or_default();
                return Ok(json_ok(table::render(
                    &t.ty,
                    &items,
                    store.resource_version(),
                )));
            }
            Ok(json_ok(list))
        }
        (Method::GET, Some(name)) => {
            let obj = store
                .lock()
                .get(&gr, &ns, &name)
                .cloned()
                .ok_or_else(|| ApiError::not_found(&t.ty.plural, &t.ty.group, &name))?;
            let obj = at_version(&t.ty, obj);
            if table::wanted(accept) {
                return Ok(json_ok(table::render(
                    &t.ty,
                    &[obj],
                    store.resource_version(),
                )));
            }
            Ok(json_ok(obj))
        }
        (Method::POST, None) => {
            if t.ty.namespaced && t.namespace.is_none() {
                return Err(not_found());
            }
            let obj = parse_body(body, content_type)?;
            let created = ops::create(&mut store.lock(), &t.ty, &ns, obj, &opts)?;
            Ok(json_response(
                StatusCode::CREATED,
                &at_version(&t.ty, created),
            ))
        }
        (Method::PUT, Some(name)) => {
            let obj = parse_body(body, content_type)?;
            let updated = ops::replace(&mut store.lock(), &t.ty, &ns, &name, obj, t.status, &opts)?;
            Ok(json_ok(at_version(&t.ty, updated)))
        }
        (Method::PATCH, Some(name)) => {
            let mime = content_type.split(';').next().unwrap_or_default().trim();
            let kind = match mime {
                "application/merge-patch+json" => PatchKind::Merge,
                "application/json-patch+json" => PatchKind::Json,
                "application/strategic-merge-patch+json" => PatchKind::Strategic,
                "application/apply-patch+yaml" => PatchKind::Apply,
                other => return Err(ApiError::unsupported_media_type(other)),
            };
            if kind == PatchKind::Apply && query.get("fieldManager").is_none_or(str::is_empty) {
                return Err(ApiError::bad_request(
                    "PATCH requests with apply content type require fieldManager",
                ));
            }
            let patch = if kind == PatchKind::Apply {
                parse_yaml(body)?
            } else {
                parse_json(body)?
            };
            let (obj, created) = ops::patch(
                &mut store.lock(),
                &t.ty,
                &ns,
                &name,
                kind,
                &patch,
                t.status,
                &opts,
            )?;
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_response(code, &at_version(&t.ty, obj)))
        }
        (Method::DELETE, Some(name)) => {
            let d = delete_opts(query, body)?;
            let obj = gc::delete(&mut store.lock(), &gr, &ns, &name, &d)?;
            let code = if obj["metadata"].get("deletionTimestamp").is_some()
                && store.lock().get(&gr, &ns, &name).is_some()
            {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            Ok(json_response(code, &at_version(&t.ty, obj)))
        }
        (Method::DELETE, None) => {
            let d = delete_opts(query, body)?;
            let list = list(store, &t, query)?;
            let mut deleted = Vec::new();
            let mut st = store.lock();
            for item in list["items"].as_array().into_iter().flatten() {
                let (ins, iname) = (
                    item["metadata"]["namespace"].as_str().unwrap_or_default(),
                    item["metadata"]["name"].as_str().unwrap_or_default(),
                );
                if let Ok(obj) = gc::delete(&mut st, &gr, ins, iname, &d) {
                    deleted.push(at_version(&t.ty, obj));
                }
            }
            let rv = st.rv();
            drop(st);
            Ok(json_ok(list_doc(&t.ty, deleted, rv, None)))
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method})"
        ))),
    }
}

/// Stored objects keep the apiVersion they were written with; answers use the requested one.
fn at_version(ty: &ResourceType, mut obj: Value) -> Value {
    obj["apiVersion"] = json!(ty.api_version());
    obj["kind"] = json!(ty.kind);
    obj
}

fn list_doc(ty: &ResourceType, items: Vec<Value>, rv: u64, cont: Option<(String, usize)>) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some((token, remaining)) = cont {
        meta["continue"] = json!(token);
        meta["remainingItemCount"] = json!(remaining);
    }
    json!({"apiVersion": ty.api_version(), "kind": format!("{}List", ty.kind), "metadata": meta, "items": items})
}

fn list(store: &Store, t: &Target, query: &Query) -> Result<Value, ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or_default())?;
    let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or_default())?;
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let after = query.get("continue").filter(|c| !c.is_empty());
    let st = store.lock();
    let key = |o: &Value| {
        format!(
            "{}/{}",
            o["metadata"]["namespace"].as_str().unwrap_or_default(),
            o["metadata"]["name"].as_str().unwrap_or_default()
        )
    };
    let matching: Vec<Value> = st
        .list(&t.ty.group_resource(), t.namespace.as_deref())
        .into_iter()
        .filter(|o| labels.matches(o) && fields.matches(o))
        .filter(|o| after.is_none_or(|a| key(o).as_str() > a))
        .map(|o| at_version(&t.ty, o.clone()))
        .collect();
    let rv = st.rv();
    drop(st);
    match limit {
        Some(limit) if matching.len() > limit => {
            let remaining = matching.len() - limit;
            let page: Vec<Value> = matching.into_iter().take(limit).collect();
            let token = page.last().map(key).unwrap_or_default();
            Ok(list_doc(&t.ty, page, rv, Some((token, remaining))))
        }
        _ => Ok(list_doc(&t.ty, matching, rv, None)),
    }
}

fn watch_response(
    app: &AppState,
    t: Target,
    query: &Query,
    table: bool,
) -> Result<Response, ApiError> {
    let since = match query.get("resourceVersion") {
        None | Some("" | "0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs);
    let mut params = WatchParams {
        since,
        send_initial: query.flag("sendInitialEvents"),
        bookmarks: query.flag("allowWatchBookmarks"),
        timeout,
        labels: LabelSelector::parse(query.get("labelSelector").unwrap_or_default())?,
        fields: FieldSelector::parse(query.get("fieldSelector").unwrap_or_default())?,
    };
    if let Some(name) = &t.name {
        params.fields = FieldSelector::parse(&format!("metadata.name={name}"))?;
    }
    let target = WatchTarget {
        ty: t.ty,
        namespace: t.namespace,
        params,
        bookmark_interval: app.bookmark_interval,
        shutdown: app.shutdown.clone(),
        table,
    };
    let stream = watch::start(&app.store, target);
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}

fn write_opts(query: &Query, headers: &HeaderMap) -> Opts {
    let manager = query
        .get("fieldManager")
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| {
            let agent = headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("unknown");
            agent.split('/').next().unwrap_or("unknown").to_string()
        });
    let unknown = match query.get("fieldValidation") {
        Some("Ignore" | "Warn") => UnknownFields::Prune,
        _ => UnknownFields::Refuse,
    };
    Opts {
        manager,
        unknown,
        dry_run: query.get("dryRun") == Some("All"),
        force: query.flag("force"),
        privileged: false,
    }
}

fn delete_opts(query: &Query, body: &Bytes) -> Result<DeleteOpts, ApiError> {
    let b: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        parse_json(body)?
    };
    let policy = query
        .get("propagationPolicy")
        .or_else(|| b["propagationPolicy"].as_str());
    let dry_run = query.get("dryRun") == Some("All")
        || b["dryRun"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == "All"));
    Ok(DeleteOpts {
        orphan: policy == Some("Orphan") || b["orphanDependents"].as_bool() == Some(true),
        dry_run,
        uid: b["preconditions"]["uid"].as_str().map(str::to_string),
        resource_version: b["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_string),
    })
}

fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
    })
}

fn parse_yaml(body: &Bytes) -> Result<Value, ApiError> {
    serde_yaml::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
}

fn parse_body(body: &Bytes, content_type: &str) -> Result<Value, ApiError> {
    if content_type.contains("protobuf") || content_type.contains("cbor") {
        return Err(ApiError::unsupported_body(content_type));
    }
    if content_type.contains("yaml") {
        parse_yaml(body)
    } else {
        parse_json(body)
    }
}
