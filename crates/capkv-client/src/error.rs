//! The one error type of the client, and how HTTP answers become it.

use serde_json::{Map, Value};

/// Stable error codes. The server's codes are part of the HTTP contract
/// (DESIGN §4); the client's own codes have status 0 because no HTTP answer
/// was received or it could not be understood.
pub mod codes {
    /// 400: the request was malformed (also used by the client when it
    /// refuses to send a request it knows is malformed, with status 0).
    pub const INVALID_REQUEST: &str = "invalid_request";
    /// 401: the admin token is missing or wrong.
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// 404: the bucket does not exist.
    pub const BUCKET_NOT_FOUND: &str = "bucket_not_found";
    /// 404: the key does not exist.
    pub const NOT_FOUND: &str = "not_found";
    /// 409: `if_version` did not match; the error carries `current_version`.
    pub const VERSION_MISMATCH: &str = "version_mismatch";
    /// 409: the bucket exists with different settings.
    pub const BUCKET_CONFLICT: &str = "bucket_conflict";
    /// 413: the key, value or body is over its limit.
    pub const TOO_LARGE: &str = "too_large";
    /// 503: this side of the cluster has no majority.
    pub const NO_QUORUM: &str = "no_quorum";
    /// 503: an ap read with a session token found no replica that has seen
    /// the session's write.
    pub const SESSION_NOT_SATISFIED: &str = "session_not_satisfied";
    /// 400: a `local` ap read on a node that holds no replica of the key;
    /// the error's `replicas` detail names the nodes that do.
    pub const NOT_A_REPLICA: &str = "not_a_replica";
    /// 503: the node sheds load.
    pub const OVERLOADED: &str = "overloaded";
    /// 504: the server's deadline passed; the write may or may not have
    /// happened.
    pub const TIMEOUT: &str = "timeout";
    /// Client side, status 0: no connection could be made or it broke
    /// before an answer arrived.
    pub const UNREACHABLE: &str = "unreachable";
    /// Client side, status 0: the client's own per-request timeout passed.
    /// Like the server's `timeout`, the outcome of a write is unknown.
    pub const CLIENT_TIMEOUT: &str = "client_timeout";
    /// Client side: the answer was not the JSON the contract promises (the
    /// status is kept when there was one).
    pub const BAD_RESPONSE: &str = "bad_response";
    /// Client side, status 0: the endpoint is not an `http://HOST:PORT` URL.
    pub const INVALID_ENDPOINT: &str = "invalid_endpoint";
}

/// How many characters of an unexpected (non-JSON) body an error keeps, so
/// that an HTML error page does not flood a terminal.
const UNEXPECTED_BODY_CHARS_MAX: usize = 200;

/// An error answer from the server, or a failure to get one.
///
/// `code` is the stable machine-readable string of the HTTP contract
/// (`no_quorum`, `version_mismatch`, ...) or one of the client's own codes in
/// [`codes`]; `status` is the HTTP status, or 0 when no HTTP answer was
/// received.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ClientError {
    /// The HTTP status, or 0 when the error arose in the client.
    pub status: u16,
    /// The stable error code.
    pub code: String,
    /// A human-readable sentence from the server or the client.
    pub message: String,
    /// For `version_mismatch`: the version the key has now.
    pub current_version: Option<u64>,
    /// Any other fields of the server's error object, kept for callers that
    /// know a newer contract than this client.
    pub details: Map<String, Value>,
}

impl ClientError {
    /// An error that arose in the client (status 0).
    pub fn local(code: &str, message: impl Into<String>) -> ClientError {
        ClientError {
            status: 0,
            code: code.to_string(),
            message: message.into(),
            current_version: None,
            details: Map::new(),
        }
    }

    /// True when the key does not exist (`404 not_found`).
    pub fn is_not_found(&self) -> bool {
        self.code == codes::NOT_FOUND
    }

    /// True when no HTTP answer was received (unreachable or timed out).
    pub fn is_transport(&self) -> bool {
        self.status == 0 && (self.code == codes::UNREACHABLE || self.code == codes::CLIENT_TIMEOUT)
    }

    /// Turns a non-2xx answer into an error. A body that is not the
    /// contract's JSON object still gives an error that names the status and
    /// starts of the body, never a panic.
    pub(crate) fn from_http_answer(status: u16, body: &[u8]) -> ClientError {
        let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(body) else {
            return ClientError {
                status,
                ..ClientError::local(
                    codes::BAD_RESPONSE,
                    format!(
                        "HTTP {status} with a body that is not a JSON error object: {}",
                        body_excerpt(body)
                    ),
                )
            };
        };
        let code = match fields.remove("error") {
            Some(Value::String(code)) => code,
            _ => codes::BAD_RESPONSE.to_string(),
        };
        let message = match fields.remove("message") {
            Some(Value::String(message)) => message,
            Some(other) => other.to_string(),
            None => format!("HTTP {status}"),
        };
        let current_version = fields.get("current_version").and_then(Value::as_u64);
        ClientError {
            status,
            code,
            message,
            current_version,
            details: fields,
        }
    }

    /// Turns a reqwest failure into an error with a client code and the
    /// whole chain of causes in the message ("connection refused" is the
    /// useful part, and reqwest keeps it in a source).
    pub(crate) fn from_transport(error: &reqwest::Error) -> ClientError {
        let code = if error.is_timeout() {
            codes::CLIENT_TIMEOUT
        } else if error.is_decode() {
            codes::BAD_RESPONSE
        } else {
            codes::UNREACHABLE
        };
        let mut message = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        ClientError::local(code, message)
    }
}

fn body_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut excerpt: String = text.chars().take(UNEXPECTED_BODY_CHARS_MAX).collect();
    if text.chars().count() > UNEXPECTED_BODY_CHARS_MAX {
        excerpt.push('…');
    }
    format!("{excerpt:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contracts_error_object_is_decoded() {
        let error = ClientError::from_http_answer(
            503,
            br#"{"error":"no_quorum","message":"group 0 has no leader","group":0}"#,
        );
        assert_eq!(error.status, 503);
        assert_eq!(error.code, "no_quorum");
        assert_eq!(error.message, "group 0 has no leader");
        assert_eq!(error.current_version, None);
        assert_eq!(error.details.get("group"), Some(&Value::from(0)));
        assert_eq!(error.to_string(), "no_quorum: group 0 has no leader");
    }

    #[test]
    fn version_mismatch_carries_the_current_version() {
        let error = ClientError::from_http_answer(
            409,
            br#"{"error":"version_mismatch","message":"expected 3","current_version":7}"#,
        );
        assert_eq!(error.code, codes::VERSION_MISMATCH);
        assert_eq!(error.current_version, Some(7));
    }

    #[test]
    fn a_body_that_is_not_json_is_a_bad_response_with_the_status() {
        let error = ClientError::from_http_answer(502, b"<html>bad gateway</html>");
        assert_eq!(error.status, 502);
        assert_eq!(error.code, codes::BAD_RESPONSE);
        assert!(error.message.contains("502"), "{}", error.message);
        assert!(error.message.contains("bad gateway"), "{}", error.message);
    }

    #[test]
    fn a_long_unexpected_body_is_cut() {
        let body = vec![b'x'; 10_000];
        let error = ClientError::from_http_answer(500, &body);
        assert!(error.message.len() < 400, "{}", error.message.len());
    }

    #[test]
    fn a_json_object_without_a_code_is_a_bad_response() {
        let error = ClientError::from_http_answer(500, br#"{"oops":true}"#);
        assert_eq!(error.code, codes::BAD_RESPONSE);
        assert_eq!(error.message, "HTTP 500");
    }
}
