//! Rust client for the capkv HTTP API (DESIGN §4).
//!
//! [`Client`] wraps one pooled HTTP client and one endpoint; every endpoint of
//! the API is one async method that returns a typed answer or a
//! [`ClientError`] carrying the server's stable error code. Cloning a
//! `Client` is cheap and shares the connection pool; [`Client::at`] points a
//! clone at another node of the same cluster.
//!
//! Layout: `types` holds the request and answer types, `error` the error
//! type and its decoding, this file the requests.
//!
//! What it deliberately does not do: retry, follow leaders, or pick nodes.
//! Any node answers any request (followers forward to the leader), and
//! whether a failed write may be retried is the caller's decision, because a
//! `timeout` leaves its outcome unknown. It speaks plain `http://` only.

#![warn(missing_docs)]

mod error;
mod types;

pub use error::{codes, ClientError};
pub use types::{
    ApReadOptions, ApStats, ApValues, ApWriteOptions, ApWritten, BucketCreated, BucketInfo,
    BucketMode, BucketSpec, ClusterNode, ClusterStatus, ConflictMode, Consistency, DeleteOptions,
    DeleteResult, GetOptions, GroupStatus, Health, KeyValue, LinkRule, NemesisResult, NemesisRule,
    PutOptions, PutResult, RepairStarted,
};

use base64::Engine as _;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::de::DeserializeOwned;
use std::time::Duration;
use types::{ApValuesWire, BucketList, KeyValueWire, NemesisRules, SiblingWire};

/// Per-request timeout unless [`Client::with_timeout`] says otherwise. Longer
/// than the server's default request deadline (2 s), so the server's own
/// `timeout` answer normally arrives first.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// How long to wait for a TCP connection. A dead node refuses or times out
/// here, well before the request timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest answer body the client reads. A misbehaving server cannot make
/// the client buffer without limit.
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Extra time the client waits beyond a `timeout_ms` it asked the server to
/// honour, so the server's answer (even a `timeout`) can travel back.
const SERVER_DEADLINE_MARGIN: Duration = Duration::from_secs(1);

/// Characters that stay literal in a path segment: RFC 3986's unreserved set.
/// Everything else, `/`, `?`, `#`, `%` and spaces included, is escaped.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A client of one capkv node.
#[derive(Clone, Debug)]
pub struct Client {
    /// `http://HOST:PORT` without a trailing slash; paths are appended.
    endpoint: String,
    /// The pooled HTTP client; shared by clones so connections are reused.
    http: reqwest::Client,
    /// Sent as `Authorization: Bearer` on nemesis requests.
    admin_token: Option<String>,
    /// Deadline for one request, connection included.
    request_timeout: Duration,
}

impl Client {
    /// A client of the node at `endpoint` (`http://HOST:PORT`; a bare
    /// `HOST:PORT` is taken as `http://`).
    pub fn new(endpoint: &str) -> Result<Client, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|error| ClientError::from_transport(&error))?;
        Ok(Client {
            endpoint: normalize_endpoint(endpoint)?,
            http,
            admin_token: None,
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
        })
    }

    /// The same client with an admin token for the nemesis endpoints.
    #[must_use]
    pub fn with_admin_token(mut self, token: impl Into<String>) -> Client {
        self.admin_token = Some(token.into());
        self
    }

    /// The same client with another per-request timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.request_timeout = timeout;
        self
    }

    /// A client of another node that shares this one's connection pool,
    /// token and timeout.
    pub fn at(&self, endpoint: &str) -> Result<Client, ClientError> {
        Ok(Client {
            endpoint: normalize_endpoint(endpoint)?,
            ..self.clone()
        })
    }

    /// The endpoint, `http://HOST:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.send_json(self.http.get(self.url("/v1/health")), self.request_timeout)
            .await
    }

    /// `GET /v1/cluster`: the answering node's view of members and groups.
    pub async fn cluster(&self) -> Result<ClusterStatus, ClientError> {
        self.send_json(self.http.get(self.url("/v1/cluster")), self.request_timeout)
            .await
    }

    /// `PUT /v1/buckets/{bucket}`. Creating a bucket that exists with the
    /// same settings succeeds with `created: false`.
    pub async fn create_bucket(
        &self,
        bucket: &str,
        spec: &BucketSpec,
    ) -> Result<BucketCreated, ClientError> {
        let path = format!("/v1/buckets/{}", path_segment(bucket)?);
        let request = self.http.put(self.url(&path)).json(spec);
        self.send_json(request, self.request_timeout).await
    }

    /// `GET /v1/buckets`.
    pub async fn list_buckets(&self) -> Result<Vec<BucketInfo>, ClientError> {
        let list: BucketList = self
            .send_json(self.http.get(self.url("/v1/buckets")), self.request_timeout)
            .await?;
        Ok(list.buckets)
    }

    /// `PUT /v1/kv/{bucket}/{key}` with the value as the raw body.
    pub async fn put(
        &self,
        bucket: &str,
        key: &str,
        value: impl Into<Vec<u8>>,
        options: &PutOptions,
    ) -> Result<PutResult, ClientError> {
        let mut url = self.url(&key_path(bucket, key)?);
        let mut query = QueryBuilder::default();
        if let Some(version) = options.if_version {
            query.push("if_version", &version.to_string());
        }
        if let Some(consistency) = options.consistency {
            query.push("consistency", consistency.as_str());
        }
        let timeout = query.push_timeout(options.timeout_ms, self.request_timeout);
        url.push_str(&query.finish());
        let request = self.http.put(url).body(value.into());
        self.send_json(request, timeout).await
    }

    /// `GET /v1/kv/{bucket}/{key}`. A missing key is the error `not_found`
    /// (see [`ClientError::is_not_found`]); a missing bucket is
    /// `bucket_not_found`.
    pub async fn get(
        &self,
        bucket: &str,
        key: &str,
        options: &GetOptions,
    ) -> Result<KeyValue, ClientError> {
        let mut url = self.url(&key_path(bucket, key)?);
        let mut query = QueryBuilder::default();
        if let Some(consistency) = options.consistency {
            query.push("consistency", consistency.as_str());
        }
        let timeout = query.push_timeout(options.timeout_ms, self.request_timeout);
        url.push_str(&query.finish());
        let wire: KeyValueWire = self.send_json(self.http.get(url), timeout).await?;
        decode_key_value(wire)
    }

    /// `DELETE /v1/kv/{bucket}/{key}`.
    pub async fn delete(
        &self,
        bucket: &str,
        key: &str,
        options: &DeleteOptions,
    ) -> Result<DeleteResult, ClientError> {
        let mut url = self.url(&key_path(bucket, key)?);
        let mut query = QueryBuilder::default();
        if let Some(version) = options.if_version {
            query.push("if_version", &version.to_string());
        }
        let timeout = query.push_timeout(options.timeout_ms, self.request_timeout);
        url.push_str(&query.finish());
        self.send_json(self.http.delete(url), timeout).await
    }

    /// `PUT /v1/kv/{bucket}/{key}` on an ap bucket: the answer carries the
    /// context after the write and its session token. A `no_quorum` error
    /// with `outcome: stored_on_some` means the write is stored on some
    /// replicas and will spread; it is not undone.
    pub async fn ap_put(
        &self,
        bucket: &str,
        key: &str,
        value: impl Into<Vec<u8>>,
        options: &ApWriteOptions,
    ) -> Result<ApWritten, ClientError> {
        let (url, timeout) = self.ap_write_url(bucket, key, options)?;
        self.send_json(self.http.put(url).body(value.into()), timeout)
            .await
    }

    /// `DELETE /v1/kv/{bucket}/{key}` on an ap bucket: writes a tombstone
    /// (send the context of a read to delete what it saw).
    pub async fn ap_delete(
        &self,
        bucket: &str,
        key: &str,
        options: &ApWriteOptions,
    ) -> Result<ApWritten, ClientError> {
        let (url, timeout) = self.ap_write_url(bucket, key, options)?;
        self.send_json(self.http.delete(url), timeout).await
    }

    /// `GET /v1/kv/{bucket}/{key}` on an ap bucket: every sibling and the
    /// context. An absent or deleted key is `Ok` with no siblings and the
    /// context the server sent with its `404 not_found`, so a caller can
    /// write over a tombstone causally.
    pub async fn ap_get(
        &self,
        bucket: &str,
        key: &str,
        options: &ApReadOptions,
    ) -> Result<ApValues, ClientError> {
        let mut url = self.url(&key_path(bucket, key)?);
        let mut query = QueryBuilder::default();
        if let Some(consistency) = options.consistency {
            query.push("consistency", consistency.as_str());
        }
        if let Some(session) = &options.session {
            query.push("session", &query_value(session));
        }
        let timeout = query.push_timeout(options.timeout_ms, self.request_timeout);
        url.push_str(&query.finish());
        let (status, body) = self.send(self.http.get(url), timeout).await?;
        if !(200..300).contains(&status) {
            let error = ClientError::from_http_answer(status, &body);
            return match (error.is_not_found(), error.details.get("context")) {
                (true, Some(serde_json::Value::String(context))) => Ok(ApValues {
                    key: key.to_string(),
                    siblings: Vec::new(),
                    context: context.clone(),
                    responded: detail_u64(&error, "responded"),
                    replicas: detail_u64(&error, "replicas"),
                    consistency: error
                        .details
                        .get("consistency")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                }),
                _ => Err(error),
            };
        }
        let wire: ApValuesWire = serde_json::from_slice(&body).map_err(|error| ClientError {
            status,
            ..ClientError::local(
                codes::BAD_RESPONSE,
                format!("the answer does not match the API contract: {error}"),
            )
        })?;
        decode_ap_values(wire)
    }

    /// `POST /v1/repair`: starts Merkle anti-entropy exchanges now for one
    /// ap bucket (or all of them when `None`); they finish in the
    /// background.
    pub async fn repair(&self, bucket: Option<&str>) -> Result<RepairStarted, ClientError> {
        let body = match bucket {
            Some(bucket) => serde_json::json!({ "bucket": bucket }),
            None => serde_json::json!({}),
        };
        let request = self.http.post(self.url("/v1/repair")).json(&body);
        self.send_json(request, self.request_timeout).await
    }

    fn ap_write_url(
        &self,
        bucket: &str,
        key: &str,
        options: &ApWriteOptions,
    ) -> Result<(String, Duration), ClientError> {
        let mut url = self.url(&key_path(bucket, key)?);
        let mut query = QueryBuilder::default();
        if let Some(consistency) = options.consistency {
            query.push("consistency", consistency.as_str());
        }
        if let Some(context) = &options.context {
            query.push("context", &query_value(context));
        }
        let timeout = query.push_timeout(options.timeout_ms, self.request_timeout);
        url.push_str(&query.finish());
        Ok((url, timeout))
    }

    /// `POST /v1/nemesis/partition`: nodes talk only within their group.
    /// Needs the admin token.
    pub async fn nemesis_partition(
        &self,
        groups: &[Vec<u64>],
    ) -> Result<NemesisResult, ClientError> {
        let body = serde_json::json!({ "groups": groups });
        let request = self.admin(
            self.http
                .post(self.url("/v1/nemesis/partition"))
                .json(&body),
        );
        self.send_json(request, self.request_timeout).await
    }

    /// `POST /v1/nemesis/heal`: removes every nemesis rule. Needs the admin
    /// token.
    pub async fn nemesis_heal(&self) -> Result<NemesisResult, ClientError> {
        let request = self.admin(self.http.post(self.url("/v1/nemesis/heal")));
        self.send_json(request, self.request_timeout).await
    }

    /// `POST /v1/nemesis/links`: sets the delay and loss of one directed
    /// link. Needs the admin token.
    pub async fn nemesis_link(&self, rule: &LinkRule) -> Result<NemesisResult, ClientError> {
        let request = self.admin(self.http.post(self.url("/v1/nemesis/links")).json(rule));
        self.send_json(request, self.request_timeout).await
    }

    /// `GET /v1/nemesis`: the rules in force on this node. Needs the admin
    /// token.
    pub async fn nemesis_rules(&self) -> Result<Vec<NemesisRule>, ClientError> {
        let request = self.admin(self.http.get(self.url("/v1/nemesis")));
        let rules: NemesisRules = self.send_json(request, self.request_timeout).await?;
        Ok(rules.rules)
    }

    /// `GET /metrics`: Prometheus text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let (status, body) = self
            .send(self.http.get(self.url("/metrics")), self.request_timeout)
            .await?;
        if !(200..300).contains(&status) {
            return Err(ClientError::from_http_answer(status, &body));
        }
        String::from_utf8(body).map_err(|_| ClientError {
            status,
            ..ClientError::local(codes::BAD_RESPONSE, "metrics are not UTF-8 text")
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.endpoint, path)
    }

    fn admin(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.admin_token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn send_json<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let (status, body) = self.send(request, timeout).await?;
        if !(200..300).contains(&status) {
            return Err(ClientError::from_http_answer(status, &body));
        }
        serde_json::from_slice(&body).map_err(|error| ClientError {
            status,
            ..ClientError::local(
                codes::BAD_RESPONSE,
                format!("the answer does not match the API contract: {error}"),
            )
        })
    }

    /// Sends a request and reads its body, at most [`RESPONSE_BYTES_MAX`]
    /// bytes, within `timeout` (which covers reading the body too).
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let mut response = request
            .timeout(timeout)
            .send()
            .await
            .map_err(|error| ClientError::from_transport(&error))?;
        let status = response.status().as_u16();
        let too_large = || ClientError {
            status,
            ..ClientError::local(
                codes::BAD_RESPONSE,
                format!("the answer is larger than {RESPONSE_BYTES_MAX} bytes"),
            )
        };
        let expected_bytes = response.content_length().unwrap_or(0);
        if expected_bytes > RESPONSE_BYTES_MAX as u64 {
            return Err(too_large());
        }
        let mut body = Vec::with_capacity(usize::try_from(expected_bytes).unwrap_or(0));
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| ClientError::from_transport(&error))?
        {
            if body.len() + chunk.len() > RESPONSE_BYTES_MAX {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }
}

/// Accepts `http://HOST:PORT[/]` or `HOST:PORT` and returns
/// `http://HOST:PORT`.
fn normalize_endpoint(endpoint: &str) -> Result<String, ClientError> {
    let trimmed = endpoint.trim();
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_string()
    } else {
        format!("http://{trimmed}")
    };
    let invalid = |why: &str| {
        ClientError::local(
            codes::INVALID_ENDPOINT,
            format!("endpoint {endpoint:?} {why}; expected http://HOST:PORT"),
        )
    };
    let url = reqwest::Url::parse(&with_scheme)
        .map_err(|error| invalid(&format!("is not a URL ({error})")))?;
    if url.scheme() != "http" {
        return Err(invalid(
            "does not use http:// (this client speaks plain HTTP only)",
        ));
    }
    if matches!(url.host_str(), None | Some("")) {
        return Err(invalid("has no host"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("has a path, query or fragment"));
    }
    let host = url.host_str().unwrap_or_default();
    Ok(match url.port() {
        Some(port) => format!("http://{host}:{port}"),
        None => format!("http://{host}"),
    })
}

/// Percent-encodes one path segment. URL parsers turn `.` and `..` segments
/// (escaped or not) into directory steps, and an empty segment changes the
/// route, so such names are refused here rather than sent somewhere else.
fn path_segment(name: &str) -> Result<String, ClientError> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(ClientError::local(
            codes::INVALID_REQUEST,
            format!("{name:?} cannot be used as a bucket name or key"),
        ));
    }
    Ok(utf8_percent_encode(name, PATH_SEGMENT).to_string())
}

fn key_path(bucket: &str, key: &str) -> Result<String, ClientError> {
    Ok(format!(
        "/v1/kv/{}/{}",
        path_segment(bucket)?,
        path_segment(key)?
    ))
}

fn decode_key_value(wire: KeyValueWire) -> Result<KeyValue, ClientError> {
    let value = match (wire.value, wire.value_base64) {
        (Some(text), _) => text.into_bytes(),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded.as_bytes())
            .map_err(|error| {
                ClientError::local(
                    codes::BAD_RESPONSE,
                    format!("value_base64 is not base64: {error}"),
                )
            })?,
        (None, None) => {
            return Err(ClientError::local(
                codes::BAD_RESPONSE,
                "the answer has neither value nor value_base64",
            ))
        }
    };
    Ok(KeyValue {
        key: wire.key,
        value,
        version: wire.version,
    })
}

/// Percent-encodes an opaque token for a query string.
fn query_value(text: &str) -> String {
    utf8_percent_encode(text, PATH_SEGMENT).to_string()
}

fn detail_u64(error: &ClientError, name: &str) -> u64 {
    error
        .details
        .get(name)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

fn decode_sibling(wire: SiblingWire) -> Result<Vec<u8>, ClientError> {
    match (wire.value, wire.value_base64) {
        (Some(text), _) => Ok(text.into_bytes()),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded.as_bytes())
            .map_err(|error| {
                ClientError::local(
                    codes::BAD_RESPONSE,
                    format!("value_base64 is not base64: {error}"),
                )
            }),
        (None, None) => Err(ClientError::local(
            codes::BAD_RESPONSE,
            "a sibling has neither value nor value_base64",
        )),
    }
}

fn decode_ap_values(wire: ApValuesWire) -> Result<ApValues, ClientError> {
    let siblings = wire
        .siblings
        .into_iter()
        .map(decode_sibling)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ApValues {
        key: wire.key,
        siblings,
        context: wire.context,
        responded: wire.responded,
        replicas: wire.replicas,
        consistency: wire.consistency,
    })
}

/// Builds `?a=b&c=d` from values that need no escaping (numbers, the
/// fixed consistency names, tokens passed through [`query_value`]).
#[derive(Default)]
struct QueryBuilder {
    /// The query so far, without the leading `?`.
    text: String,
}

impl QueryBuilder {
    fn push(&mut self, name: &str, value: &str) {
        if !self.text.is_empty() {
            self.text.push('&');
        }
        self.text.push_str(name);
        self.text.push('=');
        self.text.push_str(value);
    }

    /// Adds `timeout_ms` when given, and returns the client-side timeout
    /// to use: long enough for the server to answer at its deadline.
    fn push_timeout(&mut self, timeout_ms: Option<u64>, request_timeout: Duration) -> Duration {
        let Some(timeout_ms) = timeout_ms else {
            return request_timeout;
        };
        self.push("timeout_ms", &timeout_ms.to_string());
        request_timeout.max(Duration::from_millis(timeout_ms) + SERVER_DEADLINE_MARGIN)
    }

    fn finish(self) -> String {
        if self.text.is_empty() {
            String::new()
        } else {
            format!("?{}", self.text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalized() {
        assert_eq!(
            normalize_endpoint("http://127.0.0.1:8001/").unwrap(),
            "http://127.0.0.1:8001"
        );
        assert_eq!(
            normalize_endpoint("127.0.0.1:8001").unwrap(),
            "http://127.0.0.1:8001"
        );
        assert_eq!(
            normalize_endpoint("localhost:8001").unwrap(),
            "http://localhost:8001"
        );
        for bad in [
            "https://127.0.0.1:8001",
            "http://127.0.0.1:8001/v1",
            "http://",
            "ftp://x:1",
        ] {
            let error = normalize_endpoint(bad).unwrap_err();
            assert_eq!(error.code, codes::INVALID_ENDPOINT, "{bad}");
        }
    }

    #[test]
    fn path_segments_escape_everything_but_unreserved_characters() {
        assert_eq!(
            path_segment("a/b c?d#e%f").unwrap(),
            "a%2Fb%20c%3Fd%23e%25f"
        );
        assert_eq!(path_segment("Ab-1.x_y~z").unwrap(), "Ab-1.x_y~z");
        assert_eq!(path_segment("ключ").unwrap(), "%D0%BA%D0%BB%D1%8E%D1%87");
        for bad in ["", ".", ".."] {
            assert_eq!(path_segment(bad).unwrap_err().code, codes::INVALID_REQUEST);
        }
    }

    #[test]
    fn values_decode_from_text_or_base64() {
        let text = KeyValueWire {
            key: "k".into(),
            value: Some("hello".into()),
            value_base64: None,
            version: 3,
        };
        assert_eq!(decode_key_value(text).unwrap().value, b"hello");
        let binary = KeyValueWire {
            key: "k".into(),
            value: None,
            value_base64: Some("/wA=".into()),
            version: 3,
        };
        let decoded = decode_key_value(binary).unwrap();
        assert_eq!(decoded.value, vec![0xff, 0x00]);
        assert_eq!(decoded.value_text(), None);
    }

    #[test]
    fn ap_siblings_decode_from_text_or_base64() {
        let wire: ApValuesWire = serde_json::from_str(
            r#"{"key":"k","siblings":[{"value":"a"},{"value_base64":"/wA="}],
                "context":"c","responded":2,"replicas":3,"consistency":"quorum"}"#,
        )
        .unwrap();
        let values = decode_ap_values(wire).unwrap();
        assert_eq!(values.siblings, vec![b"a".to_vec(), vec![0xff, 0x00]]);
        assert_eq!((values.responded, values.replicas), (2, 3));
        let broken: ApValuesWire = serde_json::from_str(
            r#"{"key":"k","siblings":[{}],"context":"c","responded":1,"replicas":1,"consistency":"one"}"#,
        )
        .unwrap();
        assert_eq!(
            decode_ap_values(broken).unwrap_err().code,
            codes::BAD_RESPONSE
        );
        assert_eq!(query_value("a+b/c=="), "a%2Bb%2Fc%3D%3D");
    }

    #[test]
    fn ap_bucket_specs_send_only_what_is_set() {
        let spec = BucketSpec {
            read: Some(Consistency::One),
            ..BucketSpec::ap(3, ConflictMode::Lww)
        };
        assert_eq!(
            serde_json::to_value(&spec).unwrap(),
            serde_json::json!({"mode":"ap","replicas":3,"conflict":"lww","read":"one"})
        );
    }

    #[test]
    fn the_query_builder_joins_parameters() {
        let mut query = QueryBuilder::default();
        assert_eq!(QueryBuilder::default().finish(), "");
        query.push("if_version", "3");
        query.push("consistency", "stale");
        assert_eq!(query.finish(), "?if_version=3&consistency=stale");
    }
}
