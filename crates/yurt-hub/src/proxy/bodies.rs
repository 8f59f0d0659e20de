//! Reading bodies whole, with a limit, and draining request bodies a local answer does
//! not use.

use bytes::Bytes;
use http_body_util::BodyExt;

use crate::body;
use crate::status::StatusError;

/// Why a body could not be read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Longer than the limit.
    TooLarge(usize),
    /// The connection failed.
    Read(String),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge(limit) => write!(f, "the body is larger than {limit} bytes"),
            Self::Read(e) => f.write_str(e),
        }
    }
}

impl BodyError {
    /// The answer to a request whose own body could not be read: 413 when too large,
    /// `otherwise` for a failed read.
    pub fn of_request(&self, otherwise: fn(String) -> StatusError) -> StatusError {
        match self {
            Self::TooLarge(_) => StatusError::request_entity_too_large(self.to_string()),
            Self::Read(_) => otherwise(format!("reading the request: {self}")),
        }
    }
}

/// Reads `body` whole, up to `limit` bytes.
///
/// # Errors
/// The body is longer than `limit`, or reading it failed.
pub async fn collect<B>(body: B, limit: usize) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<body::BodyError>,
{
    http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                BodyError::TooLarge(limit)
            } else {
                BodyError::Read(e.to_string())
            }
        })
}

/// Most of a request body read before a local answer that does not use it.
pub const DRAIN_MAX: usize = 1024 * 1024;

/// Reads and drops a request body: answering before the client has sent its body would
/// make HTTP/2 reset the stream, and a client then sees a stream error instead of the
/// answer. A body over [`DRAIN_MAX`] is left unread (the client gets the reset).
pub async fn drain<B>(body: B)
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<body::BodyError>,
{
    let mut body = http_body_util::Limited::new(body, DRAIN_MAX);
    while let Some(Ok(_)) = body.frame().await {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    #[tokio::test]
    async fn collect_stops_at_the_limit() {
        let ok = collect(Full::new(Bytes::from_static(b"12345")), 5).await;
        assert_eq!(ok, Ok(Bytes::from_static(b"12345")));
        let big = collect(Full::new(Bytes::from_static(b"123456")), 5).await;
        assert_eq!(big, Err(BodyError::TooLarge(5)));
        assert_eq!(
            big.unwrap_err()
                .of_request(StatusError::bad_request)
                .code
                .as_u16(),
            413
        );
    }

    #[tokio::test]
    async fn a_broken_body_is_a_read_error() {
        let frames: Vec<Result<hyper::body::Frame<Bytes>, std::io::Error>> = vec![
            Ok(hyper::body::Frame::data(Bytes::from_static(b"a"))),
            Err(std::io::Error::other("reset")),
        ];
        let e = collect(StreamBody::new(futures_util::stream::iter(frames)), 10)
            .await
            .unwrap_err();
        assert_eq!(e, BodyError::Read("reset".into()));
        let status = e.of_request(StatusError::service_unavailable);
        assert_eq!(status.code.as_u16(), 503);
        assert_eq!(status.message, "reading the request: reset");
    }
}
