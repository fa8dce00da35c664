//! The HTTP API (DESIGN.md §4): JSON in and out, stable error codes, a
//! deadline on every request.

use crate::event_loop::{Input, Status};
use crate::metrics::Metrics;
use crate::nemesis::{self, Nemesis};
use crate::ServerConfig;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine;
use capkv_node::{
    ApError, ApRequest, ApResponse, ApSpec, Applied, BucketMode, BucketSpec, Command, Conflict,
    Expected, PeerMessage, ReadConsistency, ReadLevel, Request, RequestError,
    Response as NodeResponse, WriteLevel,
};
use capkv_transport::Transport;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// Most bytes of a value (and so of a PUT body).
pub const VALUE_BYTES_MAX: usize = 1 << 20;
/// Most bytes of a JSON body on admin and bucket endpoints.
pub const JSON_BODY_BYTES_MAX: usize = 64 * 1024;
/// Longest deadline a client may ask for.
pub const TIMEOUT_MS_MAX: u64 = 60_000;
/// Longest causal context or session token accepted (the ap engine's own
/// bound).
pub const TOKEN_CHARS_MAX: usize = 8192;
/// The header that may carry an ap write's causal context.
pub const CONTEXT_HEADER: &str = "x-capkv-context";
/// The header that carries an ap write's session token (answers) and may
/// carry it on a read (requests).
pub const SESSION_HEADER: &str = "x-capkv-session";
/// How long a request on a bucket this node does not know yet waits for
/// the node to apply it (a bucket created a moment ago through another
/// node), before it is sent as a cp request.
const BUCKET_WAIT: Duration = Duration::from_millis(250);

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The event loop's input channel.
    pub inputs: mpsc::Sender<Input>,
    /// The loop's latest published status.
    pub status: watch::Receiver<Status>,
    /// This node's settings.
    pub config: Arc<ServerConfig>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Nemesis rules and their relay.
    pub nemesis: Arc<Nemesis>,
    /// The peer transport (the nemesis sets its link rules).
    pub transport: Transport<PeerMessage>,
}

/// An error answer: `{"error": code, "message": text, ...details}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Map<String, Value>,
}

impl ApiError {
    /// An error with no details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Map::new(),
        }
    }

    fn with(mut self, key: &str, value: Value) -> ApiError {
        self.details.insert(key.to_string(), value);
        self
    }

    /// 400 invalid_request.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.details;
        body.insert("error".into(), Value::from(self.code));
        body.insert("message".into(), Value::from(self.message));
        (self.status, Json(Value::Object(body))).into_response()
    }
}

type ApiResult = Result<(StatusCode, Value), ApiError>;

/// Builds the router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/cluster", get(cluster))
        .route("/v1/buckets", get(list_buckets))
        .route("/v1/buckets/{bucket}", put(create_bucket))
        .route(
            "/v1/kv/{bucket}/{key}",
            get(get_key).put(put_key).delete(delete_key),
        )
        .route("/v1/nemesis", get(nemesis_show))
        .route("/v1/nemesis/partition", post(nemesis_partition))
        .route("/v1/nemesis/heal", post(nemesis_heal))
        .route("/v1/nemesis/links", post(nemesis_links))
        .route("/v1/nemesis/apply", post(nemesis_apply))
        .route("/v1/repair", post(repair))
        .route("/metrics", get(metrics))
        .fallback(not_found_route)
        .with_state(state)
}

/// Records the answer in the metrics and turns it into a response.
fn finish(state: &AppState, route: &str, result: ApiResult) -> Response {
    match result {
        Ok((status, body)) => {
            state.metrics.observe_request(route, status.as_u16(), "");
            (status, Json(body)).into_response()
        }
        Err(error) => {
            state
                .metrics
                .observe_request(route, error.status.as_u16(), error.code);
            error.into_response()
        }
    }
}

/// Like [`finish`], with the `X-Capkv-Session` header on a success that
/// carries a session token.
fn finish_with_session(
    state: &AppState,
    route: &str,
    result: Result<(StatusCode, Value, Option<String>), ApiError>,
) -> Response {
    match result {
        Ok((status, body, session)) => {
            let mut response = finish(state, route, Ok((status, body)));
            if let Some(value) =
                session.and_then(|session| axum::http::HeaderValue::from_str(&session).ok())
            {
                response.headers_mut().insert(SESSION_HEADER, value);
            }
            response
        }
        Err(error) => finish(state, route, Err(error)),
    }
}

async fn not_found_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint: see DESIGN.md section 4 for the API",
    )
}

async fn health(State(state): State<AppState>) -> Response {
    let node_id = state.config.id.0;
    finish(
        &state,
        "health",
        Ok((StatusCode::OK, json!({"status": "ok", "node_id": node_id}))),
    )
}

async fn cluster(State(state): State<AppState>) -> Response {
    let status = state.status.borrow().clone();
    let ap = serde_json::to_value(status.ap).unwrap_or(Value::Null);
    let nodes: Vec<Value> = state
        .config
        .members
        .iter()
        .map(|(id, address)| {
            let mut node = json!({
                "id": id.0,
                "peer": address.peer.to_string(),
                "http": address.http.map(|http| http.to_string()),
            });
            // A node knows only its own ap counters; ask the others for theirs.
            if *id == state.config.id {
                node["ap"] = ap.clone();
            }
            node
        })
        .collect();
    let body = json!({
        "node_id": state.config.id.0,
        "ap": ap,
        "nodes": nodes,
        "groups": [{
            "group": 0,
            "role": status.role.as_str(),
            "term": status.term.0,
            "leader": status.leader.map(|leader| leader.0),
            "commit_index": status.commit_index.0,
            "applied_index": status.applied_index.0,
            "last_index": status.last_index.0,
            "snapshot_index": status.snapshot_index.0,
        }],
    });
    finish(&state, "cluster", Ok((StatusCode::OK, body)))
}

async fn list_buckets(State(state): State<AppState>) -> Response {
    let buckets: Vec<Value> = state
        .status
        .borrow()
        .buckets
        .iter()
        .map(|(name, spec)| bucket_json(name, spec))
        .collect();
    finish(
        &state,
        "buckets",
        Ok((StatusCode::OK, json!({ "buckets": buckets }))),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BucketBody {
    mode: String,
    replicas: Option<u8>,
    conflict: Option<String>,
    read: Option<String>,
    write: Option<String>,
}

/// A bucket as `GET /v1/buckets` and `PUT /v1/buckets/{bucket}` show it:
/// name and mode always, the ap settings for ap buckets.
fn bucket_json(name: &str, spec: &BucketSpec) -> Value {
    let mut body = json!({
        "name": name,
        "bucket": name,
        "mode": spec.mode.as_str(),
        "replicas": spec.replicas,
    });
    if let Some(ap) = spec.ap_spec() {
        body["conflict"] = Value::from(ap.conflict.as_str());
        body["read"] = Value::from(ap.read.as_str());
        body["write"] = Value::from(ap.write.as_str());
    }
    body
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CommonQuery {
    timeout_ms: Option<u64>,
    consistency: Option<String>,
    if_version: Option<u64>,
    /// ap writes: the causal context of the read the write follows.
    context: Option<String>,
    /// ap reads: the session token of an earlier write.
    session: Option<String>,
}

async fn create_bucket(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<CommonQuery>, QueryRejection>,
    body: Body,
) -> Response {
    let result = async {
        let Path(name) = path.map_err(|e| ApiError::invalid(e.body_text()))?;
        let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
        let bytes = read_body(body, JSON_BODY_BYTES_MAX).await?;
        let spec: BucketBody = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::invalid(format!(
                "bucket body must be JSON like {{\"mode\":\"cp\"}}: {e}"
            ))
        })?;
        let members = state.config.members.len();
        let (mode, bucket_spec) = match spec.mode.as_str() {
            "cp" => (BucketMode::Cp, cp_bucket_spec(&spec, members)?),
            "ap" => (BucketMode::Ap, ap_bucket_spec(&spec, members)?),
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown mode '{other}': use cp or ap"
                )))
            }
        };
        let request = Request::Write(Command::CreateBucket {
            name: name.clone(),
            spec: bucket_spec.clone(),
        });
        match call(&state, request, query.timeout_ms, true).await? {
            NodeResponse::Applied(Applied::BucketReady { created }) => {
                let mut body = json!({"bucket": name, "mode": mode.as_str(), "created": created});
                if let Some(ap) = bucket_spec.ap_spec() {
                    body["replicas"] = Value::from(ap.replicas);
                    body["conflict"] = Value::from(ap.conflict.as_str());
                    body["read"] = Value::from(ap.read.as_str());
                    body["write"] = Value::from(ap.write.as_str());
                }
                Ok((StatusCode::OK, body))
            }
            NodeResponse::Applied(Applied::BucketConflict { existing }) => Err(ApiError::new(
                StatusCode::CONFLICT,
                "bucket_conflict",
                format!(
                    "bucket '{name}' exists with other settings (mode {}, {} replicas)",
                    existing.mode.as_str(),
                    existing.replicas
                ),
            )
            .with("mode", Value::from(existing.mode.as_str()))
            .with("existing", bucket_json(&name, &existing))),
            other => Err(unexpected(other)),
        }
    }
    .await;
    finish(&state, "bucket_create", result)
}

/// A cp bucket: replicated on the whole Raft group; no ap settings.
fn cp_bucket_spec(spec: &BucketBody, members: usize) -> Result<BucketSpec, ApiError> {
    if spec.conflict.is_some() || spec.read.is_some() || spec.write.is_some() {
        return Err(ApiError::invalid(
            "conflict, read and write settings apply to ap buckets only",
        ));
    }
    let voters = u8::try_from(members).unwrap_or(u8::MAX);
    let replicas = spec.replicas.unwrap_or(voters);
    if replicas != voters {
        return Err(ApiError::invalid(format!(
            "a cp bucket is replicated on the whole Raft group: replicas must be {voters}"
        )));
    }
    Ok(BucketSpec::cp(replicas))
}

/// An ap bucket: N = `replicas` (default min(3, cluster size)), siblings
/// and quorum levels unless the body says otherwise.
fn ap_bucket_spec(spec: &BucketBody, members: usize) -> Result<BucketSpec, ApiError> {
    let members_max = u8::try_from(members).unwrap_or(u8::MAX);
    let replicas = spec.replicas.unwrap_or(3.min(members_max));
    if replicas == 0 || replicas > members_max {
        return Err(ApiError::invalid(format!(
            "an ap bucket keeps 1 to {members_max} replicas of each key (one per node); got {replicas}"
        )));
    }
    let conflict = match spec.conflict.as_deref() {
        None => Conflict::Siblings,
        Some(text) => Conflict::parse(text).ok_or_else(|| {
            ApiError::invalid(format!("unknown conflict '{text}': use siblings or lww"))
        })?,
    };
    let read = match spec.read.as_deref() {
        None => ReadLevel::Quorum,
        Some(text) => ReadLevel::parse(text).ok_or_else(|| {
            ApiError::invalid(format!(
                "unknown read level '{text}': use local, one, quorum or all"
            ))
        })?,
    };
    let write = match spec.write.as_deref() {
        None => WriteLevel::Quorum,
        Some(text) => WriteLevel::parse(text).ok_or_else(|| {
            ApiError::invalid(format!(
                "unknown write level '{text}': use one, quorum or all"
            ))
        })?,
    };
    Ok(BucketSpec::ap(ApSpec {
        replicas,
        conflict,
        read,
        write,
    }))
}

/// The bucket's settings as this node knows them. A bucket this node has
/// not applied yet (created a moment ago through another node) gets a short
/// wait; `None` after it means the node does not know the bucket.
async fn bucket_spec(
    state: &AppState,
    bucket: &str,
    timeout_ms: Option<u64>,
) -> Option<BucketSpec> {
    if let Some(spec) = state.status.borrow().buckets.get(bucket) {
        return Some(spec.clone());
    }
    // At most a quarter of the request's deadline, so the request itself
    // still answers within it.
    let deadline_ms = timeout_ms.unwrap_or(state.config.request_timeout_ms);
    let wait = BUCKET_WAIT.min(Duration::from_millis(deadline_ms / 4));
    let mut status = state.status.clone();
    let waited = tokio::time::timeout(
        wait,
        status.wait_for(|status| status.buckets.contains_key(bucket)),
    )
    .await;
    match waited {
        Ok(Ok(status)) => status.buckets.get(bucket).cloned(),
        _ => None,
    }
}

/// Refuses ap-only parameters on a cp bucket.
fn refuse_ap_parameters(query: &CommonQuery, headers: &HeaderMap) -> Result<(), ApiError> {
    if query.context.is_some() || headers.contains_key(CONTEXT_HEADER) {
        return Err(ApiError::invalid(
            "context applies to ap buckets; cp buckets take if_version for compare-and-set",
        ));
    }
    if query.session.is_some() || headers.contains_key(SESSION_HEADER) {
        return Err(ApiError::invalid(
            "session applies to ap buckets; cp reads are linearizable by default",
        ));
    }
    Ok(())
}

/// Refuses cp-only parameters on an ap bucket.
fn refuse_cp_parameters(query: &CommonQuery) -> Result<(), ApiError> {
    if query.if_version.is_some() {
        return Err(ApiError::invalid(
            "if_version applies to cp buckets; an ap write supersedes what it read by sending \
             the read's context (?context= or X-Capkv-Context)",
        ));
    }
    Ok(())
}

/// A token from the query or, failing that, its header.
fn token(
    from_query: Option<&String>,
    headers: &HeaderMap,
    header: &str,
    what: &str,
) -> Result<Option<String>, ApiError> {
    let text = match from_query {
        Some(text) => Some(text.clone()),
        None => match headers.get(header) {
            None => None,
            Some(value) => Some(
                value
                    .to_str()
                    .map_err(|_| ApiError::invalid(format!("invalid {what}: not ASCII text")))?
                    .to_string(),
            ),
        },
    };
    match text {
        Some(text) if text.is_empty() || text.len() > TOKEN_CHARS_MAX => Err(ApiError::invalid(
            format!("invalid {what}: must be 1 to {TOKEN_CHARS_MAX} characters"),
        )),
        other => Ok(other),
    }
}

fn write_level(query: &CommonQuery, spec: &ApSpec) -> Result<WriteLevel, ApiError> {
    match query.consistency.as_deref() {
        None => Ok(spec.write),
        Some("linearizable" | "stale") => Err(ApiError::invalid(
            "linearizable and stale apply to cp buckets; ap writes take one, quorum or all",
        )),
        Some("local") => Err(ApiError::invalid(
            "local applies to ap reads; ap writes take one, quorum or all",
        )),
        Some(text) => WriteLevel::parse(text).ok_or_else(|| {
            ApiError::invalid(format!(
                "unknown consistency '{text}': ap writes take one, quorum or all"
            ))
        }),
    }
}

fn read_level(query: &CommonQuery, spec: &ApSpec) -> Result<ReadLevel, ApiError> {
    match query.consistency.as_deref() {
        None => Ok(spec.read),
        Some("linearizable" | "stale") => Err(ApiError::invalid(
            "linearizable and stale apply to cp buckets; ap reads take local, one, quorum or all",
        )),
        Some(text) => ReadLevel::parse(text).ok_or_else(|| {
            ApiError::invalid(format!(
                "unknown consistency '{text}': ap reads take local, one, quorum or all"
            ))
        }),
    }
}

fn read_consistency(query: &CommonQuery) -> Result<ReadConsistency, ApiError> {
    match query.consistency.as_deref() {
        None | Some("linearizable") => Ok(ReadConsistency::Linearizable),
        Some("stale") => Ok(ReadConsistency::Stale),
        Some("one" | "quorum" | "all" | "local") => Err(ApiError::invalid(
            "one, quorum, all and local apply to ap buckets; cp buckets take linearizable or stale",
        )),
        Some(other) => Err(ApiError::invalid(format!(
            "unknown consistency '{other}': use linearizable or stale"
        ))),
    }
}

async fn get_key(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<CommonQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let Path((bucket, key)) = path.map_err(|e| ApiError::invalid(e.body_text()))?;
        let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
        if let Some(spec) = ap_spec_of(&state, &bucket, query.timeout_ms).await {
            return ap_get(&state, bucket, key, &query, &headers, &spec).await;
        }
        refuse_ap_parameters(&query, &headers)?;
        let consistency = read_consistency(&query)?;
        let request = Request::Read {
            bucket,
            key: key.clone(),
            consistency,
        };
        match call(&state, request, query.timeout_ms, false).await? {
            NodeResponse::Value(Some(versioned)) => {
                let mut body = Map::new();
                body.insert("key".into(), Value::from(key));
                insert_value(&mut body, versioned.value);
                body.insert("version".into(), Value::from(versioned.version));
                Ok((StatusCode::OK, Value::Object(body)))
            }
            NodeResponse::Value(None) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("key '{key}' not found"),
            )),
            other => Err(unexpected(other)),
        }
    }
    .await;
    finish(&state, "kv_get", result)
}

/// `"value": text`, or `"value_base64"` when the bytes are not UTF-8.
fn insert_value(body: &mut Map<String, Value>, value: Vec<u8>) {
    match String::from_utf8(value) {
        Ok(text) => body.insert("value".into(), Value::from(text)),
        Err(error) => body.insert(
            "value_base64".into(),
            Value::from(base64::engine::general_purpose::STANDARD.encode(error.into_bytes())),
        ),
    };
}

/// The bucket's ap settings, or `None` for a cp bucket or one this node
/// does not know (the cp path answers those).
async fn ap_spec_of(state: &AppState, bucket: &str, timeout_ms: Option<u64>) -> Option<ApSpec> {
    bucket_spec(state, bucket, timeout_ms)
        .await
        .and_then(|spec| spec.ap_spec())
}

async fn ap_get(
    state: &AppState,
    bucket: String,
    key: String,
    query: &CommonQuery,
    headers: &HeaderMap,
    spec: &ApSpec,
) -> ApiResult {
    refuse_cp_parameters(query)?;
    if query.context.is_some() {
        return Err(ApiError::invalid(
            "context applies to ap writes; a read returns one",
        ));
    }
    let level = read_level(query, spec)?;
    let session = token(query.session.as_ref(), headers, SESSION_HEADER, "session")?;
    let request = Request::Ap(ApRequest::Read {
        bucket,
        key: key.clone(),
        level: Some(level),
        session,
    });
    match call_ap(state, request, query.timeout_ms, false).await? {
        ApResponse::Values {
            values,
            context,
            responded,
            replicas,
        } if values.is_empty() => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("key '{key}' not found (absent or deleted)"),
        )
        .with("context", Value::from(context))
        .with("responded", Value::from(responded))
        .with("replicas", Value::from(replicas))
        .with("consistency", Value::from(level.as_str()))),
        ApResponse::Values {
            values,
            context,
            responded,
            replicas,
        } => {
            let siblings: Vec<Value> = values
                .into_iter()
                .map(|value| {
                    let mut sibling = Map::new();
                    insert_value(&mut sibling, value);
                    Value::Object(sibling)
                })
                .collect();
            Ok((
                StatusCode::OK,
                json!({
                    "key": key,
                    "siblings": siblings,
                    "context": context,
                    "responded": responded,
                    "replicas": replicas,
                    "consistency": level.as_str(),
                }),
            ))
        }
        ApResponse::Failed(error) => Err(ap_error(error, false)),
        other => Err(unexpected(NodeResponse::Ap(other))),
    }
}

async fn put_key(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<CommonQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let Path((bucket, key)) = path.map_err(|e| ApiError::invalid(e.body_text()))?;
        let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
        if let Some(spec) = ap_spec_of(&state, &bucket, query.timeout_ms).await {
            let value = read_body(body, VALUE_BYTES_MAX).await?.to_vec();
            return ap_write(&state, bucket, key, Some(value), &query, &headers, &spec).await;
        }
        refuse_ap_parameters(&query, &headers)?;
        if query.consistency.is_some() {
            return Err(ApiError::invalid(
                "cp writes are always linearizable: consistency applies to ap buckets",
            ));
        }
        let value = read_body(body, VALUE_BYTES_MAX).await?.to_vec();
        let command = write_command(bucket, key, query.if_version, Some(value));
        match call(&state, Request::Write(command), query.timeout_ms, true).await? {
            NodeResponse::Applied(Applied::Written { version }) => {
                Ok((StatusCode::OK, json!({ "version": version }), None))
            }
            NodeResponse::Applied(Applied::CasFailed { current_version }) => {
                Err(version_mismatch(query.if_version, current_version))
            }
            other => Err(unexpected(other)),
        }
    }
    .await;
    finish_with_session(&state, "kv_put", result)
}

async fn delete_key(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<CommonQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let Path((bucket, key)) = path.map_err(|e| ApiError::invalid(e.body_text()))?;
        let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
        if let Some(spec) = ap_spec_of(&state, &bucket, query.timeout_ms).await {
            return ap_write(&state, bucket, key, None, &query, &headers, &spec).await;
        }
        refuse_ap_parameters(&query, &headers)?;
        if query.consistency.is_some() {
            return Err(ApiError::invalid(
                "cp deletes are always linearizable: consistency applies to ap buckets",
            ));
        }
        let command = write_command(bucket, key, query.if_version, None);
        match call(&state, Request::Write(command), query.timeout_ms, true).await? {
            NodeResponse::Applied(Applied::Deleted { existed }) => {
                Ok((StatusCode::OK, json!({ "deleted": existed }), None))
            }
            NodeResponse::Applied(Applied::CasFailed { current_version }) => {
                Err(version_mismatch(query.if_version, current_version))
            }
            other => Err(unexpected(other)),
        }
    }
    .await;
    finish_with_session(&state, "kv_delete", result)
}

/// An ap PUT (`value: Some`) or DELETE (`None`): answers the context after
/// the write and its session token (also as the `X-Capkv-Session` header).
async fn ap_write(
    state: &AppState,
    bucket: String,
    key: String,
    value: Option<Vec<u8>>,
    query: &CommonQuery,
    headers: &HeaderMap,
    spec: &ApSpec,
) -> Result<(StatusCode, Value, Option<String>), ApiError> {
    refuse_cp_parameters(query)?;
    if query.session.is_some() {
        return Err(ApiError::invalid(
            "session applies to ap reads; a write returns one",
        ));
    }
    let level = write_level(query, spec)?;
    let context = token(query.context.as_ref(), headers, CONTEXT_HEADER, "context")?;
    let request = Request::Ap(ApRequest::Write {
        bucket,
        key,
        value,
        context,
        level: Some(level),
    });
    match call_ap(state, request, query.timeout_ms, true).await? {
        ApResponse::Written {
            context,
            session,
            acks,
            replicas,
        } => Ok((
            StatusCode::OK,
            json!({
                "context": context,
                "session": session,
                "acks": acks,
                "replicas": replicas,
                "consistency": level.as_str(),
            }),
            Some(session),
        )),
        ApResponse::Failed(error) => Err(ap_error(error, true)),
        other => Err(unexpected(NodeResponse::Ap(other))),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RepairBody {
    bucket: Option<String>,
}

/// `POST /v1/repair`: starts Merkle anti-entropy exchanges with every peer
/// now, for one ap bucket or all of them; they finish in the background.
async fn repair(
    State(state): State<AppState>,
    query: Result<Query<CommonQuery>, QueryRejection>,
    body: Body,
) -> Response {
    let result = async {
        let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
        let bytes = read_body(body, JSON_BODY_BYTES_MAX).await?;
        let repair: RepairBody = if bytes.iter().all(u8::is_ascii_whitespace) {
            RepairBody::default()
        } else {
            serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::invalid(format!(
                    "repair body must be {{}} or {{\"bucket\":\"name\"}}: {e}"
                ))
            })?
        };
        if let Some(bucket) = &repair.bucket {
            if bucket_spec(&state, bucket, query.timeout_ms)
                .await
                .is_none()
            {
                return Err(request_error(RequestError::BucketNotFound));
            }
        }
        let request = Request::Ap(ApRequest::Repair {
            bucket: repair.bucket,
        });
        match call_ap(&state, request, query.timeout_ms, false).await? {
            ApResponse::RepairStarted { exchanges } => {
                Ok((StatusCode::OK, json!({ "exchanges": exchanges })))
            }
            ApResponse::Failed(error) => Err(ap_error(error, false)),
            other => Err(unexpected(NodeResponse::Ap(other))),
        }
    }
    .await;
    finish(&state, "repair", result)
}

/// An ap failure as an HTTP answer. A write that missed its level is not
/// undone: `outcome` says whether it is stored anywhere.
fn ap_error(error: ApError, write: bool) -> ApiError {
    let message = error.to_string();
    match error {
        ApError::NoQuorum {
            required,
            responded,
            replicas,
        } => {
            let (message, outcome) = match (write, responded > 0) {
                (false, _) => (message, None),
                (true, true) => (
                    format!(
                        "{message}; the write is stored on {responded} replica(s) and will \
                         spread to the others (it is not undone)"
                    ),
                    Some("stored_on_some"),
                ),
                (true, false) => (
                    format!("{message}; the write was not applied"),
                    Some("not_applied"),
                ),
            };
            let answer = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_quorum", message)
                .with("required", Value::from(required))
                .with("responded", Value::from(responded))
                .with("replicas", Value::from(replicas));
            match outcome {
                Some(outcome) => answer.with("outcome", Value::from(outcome)),
                None => answer,
            }
        }
        ApError::CoordinatorTimeout {
            coordinator,
            replicas,
        } => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message)
            .with("coordinator", Value::from(coordinator.0))
            .with("replicas", Value::from(replicas))
            .with("outcome", Value::from("unknown")),
        ApError::SessionNotSatisfied {
            responded,
            replicas,
        } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "session_not_satisfied",
            message,
        )
        .with("responded", Value::from(responded))
        .with("replicas", Value::from(replicas)),
        ApError::BadToken { what, .. } => {
            ApiError::invalid(message).with("parameter", Value::from(what))
        }
        ApError::NotAReplica { node, replicas } => {
            let ids: Vec<u64> = replicas.iter().map(|id| id.0).collect();
            let names: Vec<String> = ids.iter().map(|id| format!("n{id}")).collect();
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "not_a_replica",
                format!(
                    "node n{} holds no replica of this key, so it cannot read it at local; \
                     its replicas are {}",
                    node.0,
                    names.join(", ")
                ),
            )
            .with("replicas", Value::from(ids))
        }
        ApError::Busy(reason) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", reason)
        }
        ApError::TooLarge(reason) => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", reason)
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let status = state.status.borrow().clone();
    let text = state.metrics.render(&status);
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}

/// Reads at most `limit` bytes of body; more is `413 too_large`.
async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is larger than {limit} bytes"),
        )
        .with("limit_bytes", Value::from(limit))
    })
}

/// Hands `request` to the event loop and waits for the answer until the
/// deadline. `mutates` says whether a timeout leaves the outcome unknown.
async fn call(
    state: &AppState,
    request: Request,
    timeout_ms: Option<u64>,
    mutates: bool,
) -> Result<NodeResponse, ApiError> {
    call_with(state, request, timeout_ms, |timeout_ms| {
        deadline_error(state, timeout_ms, mutates)
    })
    .await
}

/// [`call`] for an ap request. The engine answers within its own (shorter)
/// timeout, so the deadline passes only when a client asked for less time
/// than that: `504 timeout`, and for a write the outcome is unknown.
async fn call_ap(
    state: &AppState,
    request: Request,
    timeout_ms: Option<u64>,
    mutates: bool,
) -> Result<ApResponse, ApiError> {
    let response = call_with(state, request, timeout_ms, |timeout_ms| {
        let error = ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("no answer from the ap replicas within {timeout_ms} ms"),
        );
        if mutates {
            error.with("outcome", Value::from("unknown"))
        } else {
            error
        }
    })
    .await?;
    match response {
        NodeResponse::Ap(response) => Ok(response),
        other => Err(unexpected(other)),
    }
}

async fn call_with(
    state: &AppState,
    request: Request,
    timeout_ms: Option<u64>,
    on_deadline: impl FnOnce(u64) -> ApiError,
) -> Result<NodeResponse, ApiError> {
    let timeout_ms = timeout_ms.unwrap_or(state.config.request_timeout_ms);
    if timeout_ms == 0 || timeout_ms > TIMEOUT_MS_MAX {
        return Err(ApiError::invalid(format!(
            "timeout_ms must be 1..={TIMEOUT_MS_MAX}"
        )));
    }
    let timeout = Duration::from_millis(timeout_ms);
    let (reply, answer) = oneshot::channel();
    let input = Input::Client {
        request,
        deadline: Instant::now() + timeout,
        reply,
    };
    if state.inputs.try_send(input).is_err() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the node's request queue is full; retry later",
        ));
    }
    let response = match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(response)) => response,
        Ok(Err(_)) if state.inputs.is_closed() => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the node is shutting down",
            ))
        }
        // The loop forgot the request because its deadline passed (its
        // clock and ours race by a hair): that is the deadline answer.
        Ok(Err(_)) | Err(_) => return Err(on_deadline(timeout_ms)),
    };
    match response {
        NodeResponse::Failed(error) => Err(request_error(error)),
        other => Ok(other),
    }
}

/// The answer when the deadline passes: `503 no_quorum` when this node has
/// no leader it can reach (the minority side of a partition), else `504
/// timeout`. For a write, the outcome is unknown either way.
fn deadline_error(state: &AppState, timeout_ms: u64, mutates: bool) -> ApiError {
    let leader = state.status.borrow().leader;
    let error = match leader {
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_quorum",
            format!(
                "no leader reachable within {timeout_ms} ms: this node cannot reach a majority"
            ),
        ),
        Some(leader) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("no answer within {timeout_ms} ms (leader n{})", leader.0),
        ),
    };
    if mutates {
        error.with("outcome", Value::from("unknown"))
    } else {
        error
    }
}

/// The command for a PUT (`value: Some`) or DELETE (`None`), made
/// conditional on the key's version when `if_version` is given.
fn write_command(
    bucket: String,
    key: String,
    if_version: Option<u64>,
    value: Option<Vec<u8>>,
) -> Command {
    match (if_version, value) {
        (Some(version), value) => Command::Cas {
            bucket,
            key,
            expected: Expected::Version(version),
            value,
        },
        (None, Some(value)) => Command::Put { bucket, key, value },
        (None, None) => Command::Delete { bucket, key },
    }
}

/// `409 version_mismatch`: an `if_version` write found another version.
fn version_mismatch(if_version: Option<u64>, current_version: u64) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "version_mismatch",
        format!(
            "if_version={} does not match the current version {current_version}",
            if_version.unwrap_or(0)
        ),
    )
    .with("current_version", Value::from(current_version))
}

fn request_error(error: RequestError) -> ApiError {
    match error {
        RequestError::NotLeader { .. } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_quorum",
            "no leader: this node cannot reach a majority right now",
        ),
        RequestError::Busy(reason) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", reason)
        }
        RequestError::Dropped => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "leader_changed",
            "the leader changed before the write committed; it did not take effect",
        ),
        RequestError::Invalid(reason) => ApiError::invalid(reason),
        RequestError::BucketNotFound => ApiError::new(
            StatusCode::NOT_FOUND,
            "bucket_not_found",
            "no such bucket: create it with PUT /v1/buckets/{bucket}",
        ),
        // What the deadline would have answered, without the wait.
        RequestError::LeaderLost => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_quorum",
            "this node lost its leadership before the write committed and cannot reach a majority; the write may still take effect",
        )
        .with("outcome", Value::from("unknown")),
    }
}

fn unexpected(response: NodeResponse) -> ApiError {
    tracing::error!(?response, "unexpected answer from the node");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "unexpected answer from the node",
    )
}

// ----- nemesis -----

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = state.config.admin_token.as_deref() else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "admin endpoints are disabled: start the node with --admin-token",
        ));
    };
    let given = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if given != Some(expected) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong admin token (Authorization: Bearer <token>)",
        ));
    }
    Ok(())
}

async fn json_body<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = read_body(body, JSON_BODY_BYTES_MAX).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("malformed JSON: {e}")))
}

async fn nemesis_show(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let result = authorize(&state, &headers).map(|()| (StatusCode::OK, state.nemesis.describe()));
    finish(&state, "nemesis", result)
}

async fn nemesis_partition(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        authorize(&state, &headers)?;
        let request: nemesis::PartitionRequest = json_body(body).await?;
        let members: Vec<u64> = state.config.members.keys().map(|id| id.0).collect();
        let rules =
            nemesis::partition_rules(&request.groups, &members).map_err(ApiError::invalid)?;
        Ok(relay(&state, rules, true).await)
    }
    .await;
    finish(&state, "nemesis_partition", result)
}

async fn nemesis_heal(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let result = async {
        authorize(&state, &headers)?;
        Ok(relay(&state, Vec::new(), true).await)
    }
    .await;
    finish(&state, "nemesis_heal", result)
}

async fn nemesis_links(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        authorize(&state, &headers)?;
        let rule: nemesis::DirectedRule = json_body(body).await?;
        let members: Vec<u64> = state.config.members.keys().map(|id| id.0).collect();
        rule.validate(&members).map_err(ApiError::invalid)?;
        Ok(relay(&state, vec![rule], false).await)
    }
    .await;
    finish(&state, "nemesis_links", result)
}

/// The control path: a node applies rules relayed by whichever node the
/// operator asked. It travels over HTTP, which the rules never cut.
async fn nemesis_apply(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        authorize(&state, &headers)?;
        let apply: nemesis::ApplyRequest = json_body(body).await?;
        let members: Vec<u64> = state.config.members.keys().map(|id| id.0).collect();
        for rule in &apply.rules {
            rule.validate(&members).map_err(ApiError::invalid)?;
        }
        state
            .nemesis
            .apply(&state.transport, state.config.id, apply);
        Ok((StatusCode::OK, state.nemesis.describe()))
    }
    .await;
    finish(&state, "nemesis_apply", result)
}

async fn relay(
    state: &AppState,
    rules: Vec<nemesis::DirectedRule>,
    replace: bool,
) -> (StatusCode, Value) {
    let apply = nemesis::ApplyRequest { rules, replace };
    let (applied, failed) = state
        .nemesis
        .relay(&state.config, &state.transport, apply)
        .await;
    (
        StatusCode::OK,
        json!({"applied": applied, "failed": failed, "rules": state.nemesis.describe()["rules"].clone()}),
    )
}
