//! The front door's wire format: one HTTP/1.1 `CONNECT host:port` per connection, as
//! kube-apiserver 1.20's egress dialer sends it (`Host: 127.0.0.1`, so the target is
//! the request line's), and the response head it expects back (a 200 with nothing
//! after it, or an error whose reason phrase kubectl shows its user).

use std::fmt;
use std::net::IpAddr;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest request head the front door reads (the API server's is ~60 bytes).
pub const MAX_HEAD: usize = 8 * 1024;
/// Header fields a request head may carry.
const MAX_HEADERS: usize = 32;

/// Why a request head was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// More than [`MAX_HEAD`] bytes without the blank line that ends a head.
    #[error("request head longer than {MAX_HEAD} bytes")]
    TooLong,
    /// Not an HTTP/1.x request head.
    #[error("malformed request head: {0}")]
    Malformed(String),
    /// A method other than CONNECT.
    #[error("method {0} is not CONNECT")]
    NotConnect(String),
    /// The request target is not `host:port`.
    #[error("CONNECT target {0:?} is not host:port")]
    BadTarget(String),
    /// The peer closed before the head ended.
    #[error("connection closed before the request head ended")]
    Truncated,
    /// Reading failed.
    #[error("reading the request head: {0}")]
    Io(String),
}

/// Where a CONNECT asks to go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// An IP address or a host name (never resolved by the tunnel: a node's name is
    /// looked up among the Nodes).
    pub host: Host,
    /// The port.
    pub port: u16,
}

/// The host part of a [`Target`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A literal address.
    Ip(IpAddr),
    /// A name (in a fleet: a node's name, from `--kubelet-preferred-address-types`).
    Name(String),
}

impl Target {
    /// Parses `host:port`, `[v6]:port` or `v4:port`.
    ///
    /// # Errors
    /// [`HeadError::BadTarget`] for anything else, port 0 included.
    pub fn parse(text: &str) -> Result<Self, HeadError> {
        let bad = || HeadError::BadTarget(text.chars().take(256).collect());
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (v6, port) = rest.split_once("]:").ok_or_else(bad)?;
            let ip: std::net::Ipv6Addr = v6.parse().map_err(|_| bad())?;
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
            let host = match host.parse::<std::net::Ipv4Addr>() {
                Ok(ip) => Host::Ip(IpAddr::V4(ip)),
                Err(_) if is_dns_name(host) => Host::Name(host.to_ascii_lowercase()),
                Err(_) => return Err(bad()),
            };
            (host, port)
        };
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 {
            return Err(bad());
        }
        Ok(Self { host, port })
    }
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(ip) => write!(f, "{ip}:{}", self.port),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

/// Parses a complete or partial request head: `Ok(None)` while more bytes are needed,
/// else the target and the head's length (bytes after it belong to the tunnelled
/// connection).
///
/// # Errors
/// Every [`HeadError`] but `Truncated` and `Io`.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Target, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Err(HeadError::TooLong),
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(len)) => {
            let method = request.method.unwrap_or_default();
            if method != "CONNECT" {
                return Err(HeadError::NotConnect(method.chars().take(32).collect()));
            }
            let target = Target::parse(request.path.unwrap_or_default())?;
            Ok(Some((target, len)))
        }
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

/// Reads one CONNECT request head from `reader`: the target, and any bytes the
/// client sent after the head.
///
/// # Errors
/// See [`HeadError`].
pub async fn read_request<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<(Target, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        let room = MAX_HEAD.saturating_sub(buf.len()).min(chunk.len());
        if room == 0 {
            return Err(HeadError::TooLong);
        }
        let n = reader
            .read(&mut chunk[..room])
            .await
            .map_err(|e| HeadError::Io(e.to_string()))?;
        if n == 0 {
            return Err(HeadError::Truncated);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some((target, len)) = parse_head(&buf)? {
            return Ok((target, buf.split_off(len)));
        }
    }
}

/// The 200 the egress dialer waits for; nothing may follow it before the target's
/// own bytes.
pub const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// `reason` fit for a reason phrase or a header value: printable ASCII (anything else
/// becomes `?`), at most 200 characters.
pub fn clean_reason(reason: &str) -> String {
    reason
        .chars()
        .take(200)
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect()
}

/// An error response head. The reason phrase reaches kubectl's user (`proxy error
/// from ... code 502: 502 <reason>`), so it says what is wrong; anything but printable
/// ASCII is replaced and it is cut at 200 characters.
pub fn error_head(status: u16, reason: &str) -> Vec<u8> {
    let reason = clean_reason(reason);
    format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_api_servers_request_parses() {
        let head = b"CONNECT 10.10.1.2:10250 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        let (target, len) = parse_head(head).unwrap().unwrap();
        assert_eq!(len, head.len());
        assert_eq!(target.to_string(), "10.10.1.2:10250");
        assert_eq!(target.host, Host::Ip("10.10.1.2".parse().unwrap()));
        let (target, _) = parse_head(b"CONNECT Edge-A1:10250 HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(target.host, Host::Name("edge-a1".into()));
        let (target, _) = parse_head(b"CONNECT [fd00::1]:443 HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(target.to_string(), "[fd00::1]:443");
    }

    #[test]
    fn partial_heads_ask_for_more_and_long_ones_are_refused() {
        assert_eq!(parse_head(b"CONNECT 10.0.0.1:1 HTTP/1.1\r\n"), Ok(None));
        let mut long = b"CONNECT 10.0.0.1:1 HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD, b'a');
        assert_eq!(parse_head(&long), Err(HeadError::TooLong));
    }

    #[test]
    fn other_methods_and_bad_targets_are_refused() {
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\n\r\n"),
            Err(HeadError::NotConnect(m)) if m == "GET"
        ));
        for target in [
            "10.0.0.1",
            "10.0.0.1:0",
            "10.0.0.1:65536",
            "10.0.0.1:+80",
            ":80",
            "[::1:80",
            "a b:80",
            "-x:80",
            "http://x:80",
        ] {
            assert!(
                matches!(Target::parse(target), Err(HeadError::BadTarget(_))),
                "{target}"
            );
        }
        assert!(matches!(
            parse_head(b"CONNECT \x01 HTTP/1.1\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn a_request_is_read_with_the_bytes_after_it() {
        let mut input: &[u8] = b"CONNECT 10.0.0.1:80 HTTP/1.1\r\nHost: x\r\n\r\nhello";
        let (target, rest) = read_request(&mut input).await.unwrap();
        assert_eq!(target.to_string(), "10.0.0.1:80");
        assert_eq!(rest, b"hello");
        let mut short: &[u8] = b"CONNECT 10.0.0.1:80 HTTP/1.1\r\n";
        assert_eq!(read_request(&mut short).await, Err(HeadError::Truncated));
        let endless = vec![b'a'; MAX_HEAD * 2];
        let mut endless: &[u8] = &endless;
        assert!(read_request(&mut endless).await.is_err());
    }

    #[test]
    fn error_heads_carry_a_clean_reason() {
        let head = error_head(502, "node edge-a1: no agent\r\nX-Evil: 1");
        let text = String::from_utf8(head).unwrap();
        assert!(text.starts_with("HTTP/1.1 502 node edge-a1: no agent??X-Evil: 1\r\n"));
        assert_eq!(text.matches("\r\n").count(), 4);
    }

    proptest! {
        // Bounded fuzzing of the parser: any bytes give an answer, never a panic, and
        // a parsed target prints back to what parses to itself.
        #[test]
        fn any_bytes_parse_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(Some((target, len))) = parse_head(&bytes) {
                prop_assert!(len <= bytes.len());
                prop_assert_eq!(Target::parse(&target.to_string()), Ok(target));
            }
        }

        #[test]
        fn connect_lines_with_any_target_parse_or_refuse(target in "\\PC{0,80}") {
            let head = format!("CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
            match parse_head(head.as_bytes()) {
                Ok(Some((parsed, _))) => prop_assert_eq!(Target::parse(&parsed.to_string()), Ok(parsed)),
                Ok(None) => prop_assert!(false, "a complete head asked for more"),
                Err(_) => {}
            }
        }
    }
}
