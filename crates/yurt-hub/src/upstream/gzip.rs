//! gzip-encoded responses from the API server, decoded as they stream in, so the cache
//! stores and clients receive plain bodies.
//!
//! flate2 (rust-lang's, pure-Rust miniz backend) rather than async-compression or
//! tower-http: its push decoder (`write::GzDecoder`) takes each HTTP frame as it arrives
//! and hands back what it decoded, which fits a `Body` wrapper directly, with no
//! `AsyncRead`/`Stream` adapters in between. Each frame is at most one HTTP/2 DATA frame
//! (16 KiB by default), so decoding it inline is brief.

use std::io::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use flate2::write::GzDecoder;
use hyper::body::{Body, Frame};

use super::{UpstreamBody, UpstreamBodyError};

/// The body of a gzip response was not valid gzip (corrupt or cut short).
#[derive(Debug, thiserror::Error)]
#[error("the API server's gzip response is corrupt or truncated: {0}")]
pub struct CorruptGzip(#[source] pub std::io::Error);

/// Whether a `Content-Encoding` value names gzip.
pub fn is_gzip(content_encoding: &http::HeaderValue) -> bool {
    content_encoding.to_str().is_ok_and(|v| {
        v.trim().eq_ignore_ascii_case("gzip") || v.trim().eq_ignore_ascii_case("x-gzip")
    })
}

/// A body that decodes the gzip body it wraps.
pub struct GzipBody<B> {
    inner: B,
    decoder: Option<GzDecoder<Vec<u8>>>,
}

impl<B> GzipBody<B> {
    /// Decodes `inner`.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            decoder: Some(GzDecoder::new(Vec::new())),
        }
    }
}

/// Decodes `body`.
pub fn decode(body: UpstreamBody) -> UpstreamBody {
    http_body_util::BodyExt::boxed(GzipBody::new(body))
}

fn take(decoder: &mut GzDecoder<Vec<u8>>) -> Bytes {
    Bytes::from(std::mem::take(decoder.get_mut()))
}

impl<B> Body for GzipBody<B>
where
    B: Body<Data = Bytes, Error = UpstreamBodyError> + Unpin,
{
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        loop {
            if self.decoder.is_none() {
                return Poll::Ready(None);
            }
            // Frames the decoder needs more input for give no output: read on.
            let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(f) => f,
            };
            let this = &mut *self;
            let Some(decoder) = this.decoder.as_mut() else {
                return Poll::Ready(None);
            };
            match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if let Err(e) = decoder.write_all(&data) {
                            this.decoder = None;
                            return Poll::Ready(Some(Err(UpstreamBodyError(Box::new(
                                CorruptGzip(e),
                            )))));
                        }
                        let out = take(decoder);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Some(Err(e)) => {
                    this.decoder = None;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    let result = decoder.try_finish().map(|()| take(decoder));
                    this.decoder = None;
                    return Poll::Ready(match result {
                        Ok(rest) if rest.is_empty() => None,
                        Ok(rest) => Some(Ok(Frame::data(rest))),
                        Err(e) => Some(Err(UpstreamBodyError(Box::new(CorruptGzip(e))))),
                    });
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_none()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn gzipped(plain: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(plain).expect("in memory");
        e.finish().expect("in memory")
    }

    /// A body of `data` cut into `chunk`-byte frames.
    fn chunked(data: &[u8], chunk: usize) -> UpstreamBody {
        let frames: Vec<Result<Frame<Bytes>, UpstreamBodyError>> = data
            .chunks(chunk)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed()
    }

    async fn decoded(data: &[u8], chunk: usize) -> Result<Bytes, UpstreamBodyError> {
        decode(chunked(data, chunk))
            .collect()
            .await
            .map(|c| c.to_bytes())
    }

    fn plain() -> Vec<u8> {
        (0..20_000u32)
            .flat_map(|i| format!("{{\"i\":{i}}},").into_bytes())
            .collect()
    }

    #[tokio::test]
    async fn a_gzip_body_decodes_whatever_its_frames() {
        let plain = plain();
        let gz = gzipped(&plain);
        assert!(gz.len() * 4 < plain.len(), "the sample compresses");
        for chunk in [1, 7, 10, 4096, gz.len()] {
            let out = decoded(&gz, chunk).await.expect("valid gzip");
            assert_eq!(out, plain, "frames of {chunk} bytes");
        }
    }

    #[tokio::test]
    async fn a_truncated_or_corrupt_gzip_body_is_an_error() {
        let gz = gzipped(&plain());
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("cut in the middle", gz[..gz.len() / 2].to_vec()),
            ("cut before the checksum", gz[..gz.len() - 4].to_vec()),
            ("cut in the header", gz[..5].to_vec()),
            ("empty", Vec::new()),
            ("not gzip", b"{\"kind\":\"PodList\"}".to_vec()),
            ("checksum wrong", {
                let mut g = gz.clone();
                let n = g.len();
                g[n - 6] ^= 0xff;
                g
            }),
        ];
        for (what, data) in cases {
            let err = decoded(&data, 1000).await.expect_err(what);
            assert!(
                err.0.is::<CorruptGzip>(),
                "{what}: {err} is named a corrupt gzip body"
            );
        }
    }

    #[test]
    fn gzip_is_recognised_by_its_names() {
        for (v, gzip) in [
            ("gzip", true),
            ("GZIP ", true),
            ("x-gzip", true),
            ("br", false),
            ("deflate", false),
        ] {
            assert_eq!(is_gzip(&http::HeaderValue::from_static(v)), gzip, "{v}");
        }
    }
}
