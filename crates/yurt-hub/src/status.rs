//! Every error the hub answers itself becomes a Kubernetes `metav1.Status`, as the API
//! server would send it: the HTTP code, a `reason` clients switch on (client-go's
//! `apierrors.IsNotFound` and friends read `reason` and `code`), a message for people,
//! optional `details`, in the first format the client accepts (JSON or protobuf).
//!
//! `Retry-After` follows the API server (`responsewriters.ErrorNegotiated`): the header is
//! sent exactly when `details.retryAfterSeconds` is set. A [`StatusError`] for 429 is
//! built with one ([`StatusError::too_many_requests`]); a 503 only when its maker asks
//! ([`StatusError::retry_after`]): client-go retries a request up to ten times when it
//! sees the header, which an offline answer must not invite.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Response, StatusCode, header};
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime as pbruntime;
use prost::Message;

use crate::body::{self, ResponseBody};
use crate::codec::Format;

/// Why a request failed, as `metav1.StatusReason` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// 400.
    BadRequest,
    /// 401: no or an unproven identity.
    Unauthorized,
    /// 403: a known identity without the right.
    Forbidden,
    /// 404.
    NotFound,
    /// 406: the object exists in a format the client does not accept.
    NotAcceptable,
    /// 413: a request body over the limit.
    RequestEntityTooLarge,
    /// 429: too many requests in flight.
    TooManyRequests,
    /// 500.
    InternalError,
    /// 502: the API server's answer broke on the way (cut short, a corrupt gzip body).
    /// metav1 names no reason for 502; this one says what happened, and clients that do
    /// not know it go by the code.
    BadGateway,
    /// 503: nothing can answer now.
    ServiceUnavailable,
    /// 504: the request could not finish in time.
    Timeout,
}

impl Reason {
    /// The reason as it appears in a Status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "BadRequest",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "NotFound",
            Self::NotAcceptable => "NotAcceptable",
            Self::RequestEntityTooLarge => "RequestEntityTooLarge",
            Self::TooManyRequests => "TooManyRequests",
            Self::InternalError => "InternalError",
            Self::BadGateway => "BadGateway",
            Self::ServiceUnavailable => "ServiceUnavailable",
            Self::Timeout => "Timeout",
        }
    }

    /// The HTTP code the API server sends with this reason.
    pub fn code(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            Self::RequestEntityTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `metav1.StatusDetails`: what the error is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Details {
    /// The object's name.
    pub name: Option<String>,
    /// Its API group.
    pub group: Option<String>,
    /// Its kind (or resource).
    pub kind: Option<String>,
    /// When to try again, in seconds (also sent as `Retry-After`).
    pub retry_after_seconds: Option<u32>,
}

/// An error answered as a Kubernetes Status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct StatusError {
    /// The HTTP code.
    pub code: StatusCode,
    /// The reason clients switch on.
    pub reason: Reason,
    /// For people.
    pub message: String,
    /// What it is about, if known.
    pub details: Option<Details>,
}

impl StatusError {
    /// An error with `reason`'s usual code.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            code: reason.code(),
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Reason::BadRequest, message)
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(Reason::Unauthorized, message)
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Reason::Forbidden, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Reason::NotFound, message)
    }

    /// 406.
    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(Reason::NotAcceptable, message)
    }

    /// 413.
    pub fn request_entity_too_large(message: impl Into<String>) -> Self {
        Self::new(Reason::RequestEntityTooLarge, message)
    }

    /// 429, to be retried after `seconds`.
    pub fn too_many_requests(message: impl Into<String>, seconds: u32) -> Self {
        Self::new(Reason::TooManyRequests, message).retry_after(seconds)
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Reason::InternalError, message)
    }

    /// 503 (without `Retry-After`; see the module docs).
    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(Reason::ServiceUnavailable, message)
    }

    /// 504.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(Reason::Timeout, message)
    }

    /// Asks the client to retry after `seconds` (in the details and as `Retry-After`).
    #[must_use]
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.details
            .get_or_insert_with(Details::default)
            .retry_after_seconds = Some(seconds);
        self
    }

    /// Names what the error is about.
    #[must_use]
    pub fn with_details(mut self, details: Details) -> Self {
        self.details = Some(details);
        self
    }

    /// The Status body in `format`.
    pub fn encode(&self, format: Format) -> Bytes {
        let code = self.code.as_u16();
        match format {
            Format::Json => {
                let mut status = serde_json::json!({
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": self.message,
                    "reason": self.reason.as_str(),
                    "code": code,
                });
                if let Some(d) = &self.details {
                    let mut details = serde_json::Map::new();
                    let mut put = |k: &str, v: Option<serde_json::Value>| {
                        if let Some(v) = v {
                            details.insert(k.to_owned(), v);
                        }
                    };
                    put("name", d.name.clone().map(Into::into));
                    put("group", d.group.clone().map(Into::into));
                    put("kind", d.kind.clone().map(Into::into));
                    put("retryAfterSeconds", d.retry_after_seconds.map(Into::into));
                    status["details"] = details.into();
                }
                Bytes::from(status.to_string())
            }
            Format::Protobuf => {
                let s = meta::Status {
                    metadata: Some(meta::ListMeta::default()),
                    status: Some("Failure".into()),
                    message: Some(self.message.clone()),
                    reason: Some(self.reason.as_str().to_owned()),
                    details: self.details.as_ref().map(|d| meta::StatusDetails {
                        name: d.name.clone(),
                        group: d.group.clone(),
                        kind: d.kind.clone(),
                        uid: None,
                        causes: Vec::new(),
                        retry_after_seconds: d
                            .retry_after_seconds
                            .map(|s| i32::try_from(s).unwrap_or(i32::MAX)),
                    }),
                    code: Some(i32::from(code)),
                };
                protobuf_envelope(&s.encode_to_vec())
            }
        }
    }

    /// The response in the first format the client accepts (JSON if none).
    pub fn into_response(self, accept: &[Format]) -> Response<ResponseBody> {
        let format = accept.first().copied().unwrap_or(Format::Json);
        let mut r = Response::new(body::full(self.encode(format)));
        *r.status_mut() = self.code;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        );
        if let Some(seconds) = self.details.as_ref().and_then(|d| d.retry_after_seconds) {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        r
    }
}

/// A `Success` Status: the answer to an action with nothing else to return (as the API
/// server answers some deletes), in JSON.
pub fn success(message: &str) -> Response<ResponseBody> {
    let status = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "message": message,
        "code": 200,
    });
    let mut r = Response::new(body::full(status.to_string()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(Format::Json.content_type()),
    );
    r
}

/// The protobuf wire form of a `v1 Status`: the `k8s\0` magic and a `runtime.Unknown`
/// envelope (the same framing `codec` reads; written here so the Status stays whole in
/// this module).
fn protobuf_envelope(raw: &[u8]) -> Bytes {
    const MAGIC: &[u8] = b"k8s\0";
    let u = pbruntime::Unknown {
        type_meta: Some(pbruntime::TypeMeta {
            api_version: Some("v1".to_owned()),
            kind: Some("Status".to_owned()),
        }),
        raw: Some(raw.to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = BytesMut::with_capacity(MAGIC.len() + u.encoded_len());
    out.put_slice(MAGIC);
    out.put_slice(&u.encode_to_vec());
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(r: Response<ResponseBody>) -> Bytes {
        r.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_json_status_carries_code_reason_message_and_content_type() {
        let r = StatusError::forbidden("no").into_response(&[Format::Json]);
        assert_eq!(r.status(), 403);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
        let v: serde_json::Value = serde_json::from_slice(&body(r).await).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "no", "reason": "Forbidden", "code": 403,
            })
        );
    }

    #[tokio::test]
    async fn too_many_requests_asks_to_retry_in_the_header_and_the_details() {
        let r = StatusError::too_many_requests("busy", 1).into_response(&[]);
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let v: serde_json::Value = serde_json::from_slice(&body(r).await).unwrap();
        assert_eq!(v["reason"], "TooManyRequests");
        assert_eq!(v["details"]["retryAfterSeconds"], 1);
    }

    #[tokio::test]
    async fn service_unavailable_sends_retry_after_only_when_asked() {
        let plain = StatusError::service_unavailable("offline").into_response(&[]);
        assert_eq!(plain.status(), 503);
        assert!(plain.headers().get(header::RETRY_AFTER).is_none());
        let asked = StatusError::service_unavailable("offline")
            .retry_after(5)
            .into_response(&[]);
        assert_eq!(asked.headers()[header::RETRY_AFTER], "5");
    }

    #[tokio::test]
    async fn a_protobuf_status_decodes_as_a_v1_status() {
        let e = StatusError::not_found("gone").with_details(Details {
            name: Some("p".into()),
            kind: Some("pods".into()),
            ..Details::default()
        });
        let r = e.into_response(&[Format::Protobuf, Format::Json]);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            Format::Protobuf.content_type()
        );
        let bytes = body(r).await;
        let rest = bytes.strip_prefix(b"k8s\0".as_slice()).unwrap();
        let u = pbruntime::Unknown::decode(rest).unwrap();
        let tm = u.type_meta.unwrap();
        assert_eq!(
            (tm.api_version.as_deref(), tm.kind.as_deref()),
            (Some("v1"), Some("Status"))
        );
        let s = meta::Status::decode(u.raw.unwrap().as_slice()).unwrap();
        assert_eq!(s.code, Some(404));
        assert_eq!(s.reason.as_deref(), Some("NotFound"));
        assert_eq!(s.details.unwrap().name.as_deref(), Some("p"));
    }

    #[tokio::test]
    async fn a_success_status_says_so() {
        let r = success("done");
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = serde_json::from_slice(&body(r).await).unwrap();
        assert_eq!(
            (v["status"].as_str(), v["message"].as_str()),
            (Some("Success"), Some("done"))
        );
    }

    #[test]
    fn every_reason_has_the_api_servers_code() {
        for (reason, code) in [
            (Reason::BadRequest, 400),
            (Reason::Unauthorized, 401),
            (Reason::Forbidden, 403),
            (Reason::NotFound, 404),
            (Reason::NotAcceptable, 406),
            (Reason::RequestEntityTooLarge, 413),
            (Reason::TooManyRequests, 429),
            (Reason::InternalError, 500),
            (Reason::ServiceUnavailable, 503),
            (Reason::Timeout, 504),
        ] {
            assert_eq!(StatusError::new(reason, "m").code, code, "{reason}");
        }
    }
}
