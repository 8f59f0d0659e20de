use std::time::Duration;

use base64::Engine as _;
use proptest::prelude::*;

use super::jws::{JwsError, sign_detached, verify_detached};
use super::*;

const ID: &str = "abcdef";
const SECRET: &str = "0123456789abcdef";

#[test]
fn a_detached_signature_verifies_with_its_token_and_nothing_else() {
    let content = "apiVersion: v1\nkind: Config\n";
    let signature = sign_detached(content, ID, SECRET);
    assert!(signature.contains(".."), "detached: {signature}");
    assert_eq!(verify_detached(&signature, content, ID, SECRET), Ok(()));
    assert_eq!(
        verify_detached(&signature, content, ID, "0123456789abcdeg"),
        Err(JwsError::Mismatch)
    );
    assert_eq!(
        verify_detached(&signature, "apiVersion: v2\n", ID, SECRET),
        Err(JwsError::Mismatch)
    );
    // The header names the token: another ID's signature is not ours, even with our secret.
    let other = sign_detached(content, "zzzzzz", SECRET);
    assert!(matches!(
        verify_detached(&other, content, ID, SECRET),
        Err(JwsError::Header(_))
    ));
}

#[test]
fn a_signature_with_another_algorithm_or_an_attached_payload_is_refused() {
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let content = "c";
    let good = sign_detached(content, ID, SECRET);
    let (_, mac) = good.split_once("..").expect("detached");
    for header in [
        r#"{"alg":"none","kid":"abcdef"}"#,
        r#"{"alg":"HS512","kid":"abcdef"}"#,
        r#"{"alg":"HS256"}"#,
        r#"{"alg":"HS256","kid":"abcdef","crit":["x"]}"#,
        "not json",
    ] {
        let forged = format!("{}..{mac}", b64(header));
        assert!(
            matches!(
                verify_detached(&forged, content, ID, SECRET),
                Err(JwsError::Header(_))
            ),
            "{header}"
        );
    }
    let attached = good.replacen("..", &format!(".{}.", b64(content)), 1);
    assert_eq!(
        verify_detached(&attached, content, ID, SECRET),
        Err(JwsError::NotDetached)
    );
    for garbage in ["", ".", "..", "a..b..c", "%%..%%", "e30..!!"] {
        assert!(
            verify_detached(garbage, content, ID, SECRET).is_err(),
            "{garbage:?}"
        );
    }
}

proptest! {
    #[test]
    fn any_signature_text_is_checked_without_panicking(signature in ".{0,200}", content in ".{0,50}") {
        let _ = verify_detached(&signature, &content, ID, SECRET);
    }

    #[test]
    fn any_hash_text_parses_or_is_refused_without_panicking(text in ".{0,80}") {
        if let Ok(hash) = text.parse::<CaCertHash>() {
            prop_assert!(text.to_ascii_lowercase().eq(&hash.to_string()));
        }
    }
}

#[test]
fn a_ca_pin_is_the_sha256_of_the_subject_public_key_info() {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let expected = ring::digest::digest(
        &ring::digest::SHA256,
        &rcgen::PublicKeyData::subject_public_key_info(&key),
    );
    let hex: String = expected
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let pin = CaCertHash::of_certificate(cert.der()).expect("pin");
    assert_eq!(pin.to_string(), format!("sha256:{hex}"));
    assert_eq!(
        CaCertHash::of_pem_bundle(&cert.pem()).expect("bundle"),
        vec![pin]
    );
    assert_eq!(pin.to_string().parse::<CaCertHash>().expect("parses"), pin);
    assert_eq!(
        format!("SHA256:{}", hex.to_uppercase())
            .parse::<CaCertHash>()
            .expect("case"),
        pin
    );
    assert!(CaCertHash::of_certificate(b"not a certificate").is_err());
    assert!(CaCertHash::of_pem_bundle("no pem here").is_err());
}

#[test]
fn malformed_ca_pins_are_refused() {
    let digits = "a".repeat(64);
    for bad in [
        String::new(),
        digits.clone(),
        format!("md5:{digits}"),
        format!("sha256:{}", &digits[1..]),
        format!("sha256:{digits}0"),
        format!("sha256:{}g", &digits[1..]),
        format!("sha256:{}é", &digits[2..]),
        format!("sha256:+{}", &digits[1..]),
    ] {
        assert!(
            matches!(
                bad.parse::<CaCertHash>(),
                Err(DiscoveryError::MalformedHash(_))
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn an_api_server_address_is_host_and_port_or_an_https_url() {
    for (given, url) in [
        ("10.0.0.1:6443", "https://10.0.0.1:6443/"),
        ("https://api.example:443", "https://api.example:443/"),
        ("[fd00::1]:6443", "https://[fd00::1]:6443/"),
    ] {
        assert_eq!(api_server_url(given).expect(given).to_string(), url);
    }
    for bad in [
        "10.0.0.1",
        "http://10.0.0.1:6443",
        "https://10.0.0.1:6443/api",
        "https://user:pw@10.0.0.1:6443",
        "",
        "a b:1",
    ] {
        assert!(
            matches!(api_server_url(bad), Err(DiscoveryError::Endpoint { .. })),
            "{bad:?}"
        );
    }
}

fn kubeconfig(server: &str, ca_data: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca_data}\n"
    )
}

#[test]
fn cluster_info_must_hold_one_cluster_with_an_https_server_and_a_pem_ca() {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let ca = base64::engine::general_purpose::STANDARD.encode(cert.pem());
    let good = kubeconfig("https://10.0.0.1:6443", &ca);
    let info = parse_kubeconfig(&good).expect("good");
    assert_eq!(info.server, "https://10.0.0.1:6443");
    assert_eq!(info.ca_pem, cert.pem());
    assert_eq!(info.kubeconfig, good);

    let two = format!(
        "{good}- name: other\n  cluster:\n    server: https://10.0.0.2:6443\n    certificate-authority-data: {ca}\n"
    );
    for bad in [
        kubeconfig("http://10.0.0.1:6443", &ca),
        kubeconfig("https://10.0.0.1:6443", "!!!"),
        kubeconfig(
            "https://10.0.0.1:6443",
            &base64::engine::general_purpose::STANDARD.encode("not pem"),
        ),
        two,
        "clusters: 7".to_owned(),
        "{".to_owned(),
    ] {
        assert!(parse_kubeconfig(&bad).is_err(), "{bad}");
    }
}

#[test]
fn discovery_tries_again_soon_at_first_then_at_its_interval() {
    let ms = |v: &[u64]| {
        v.iter()
            .map(|m| Duration::from_millis(*m))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        super::pauses(Duration::from_secs(5))
            .take(8)
            .collect::<Vec<_>>(),
        ms(&[250, 500, 1000, 2000, 4000, 5000, 5000, 5000])
    );
    assert_eq!(
        super::pauses(Duration::from_millis(100))
            .take(3)
            .collect::<Vec<_>>(),
        ms(&[100, 100, 100]),
        "never longer than the interval"
    );
}

fn discovery(server: &str, timeout: Duration) -> Discovery {
    Discovery {
        server: api_server_url(server).expect("url"),
        token: format!("{ID}.{SECRET}").parse().expect("token"),
        ca: CaVerification::UnsafeSkip,
        timeout,
        retry_interval: Duration::from_millis(100),
    }
}

#[tokio::test]
async fn a_server_that_speaks_no_tls_ends_discovery_at_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    .await;
            });
        }
    });
    let started = std::time::Instant::now();
    let error = discovery(&address.to_string(), Duration::from_secs(60))
        .run()
        .await
        .expect_err("plain HTTP");
    assert!(
        matches!(&error, DiscoveryError::Tls { reason, .. } if reason.contains("does not speak TLS")),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "did not wait for the deadline"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_retried_until_the_deadline_and_named() {
    // A port nothing listens on: bind one, then free it.
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let error = discovery(&address.to_string(), Duration::from_millis(600))
        .run()
        .await
        .expect_err("nothing listens");
    let DiscoveryError::Unreachable { server, .. } = &error else {
        panic!("{error}");
    };
    assert!(server.contains(&address.port().to_string()), "{error}");
}

#[tokio::test]
async fn no_pins_is_refused_before_any_connection() {
    let mut d = discovery("127.0.0.1:1", Duration::from_secs(60));
    d.ca = CaVerification::Pinned(Vec::new());
    assert!(matches!(d.run().await, Err(DiscoveryError::NoPins)));
}

#[test]
fn a_bundle_reencoded_from_its_certificates_reads_back_the_same() {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let ders = certificates_in(&cert.pem()).expect("pem");
    let again = pem_bundle(&ders);
    assert_eq!(certificates_in(&again).expect("reads"), ders);
    assert!(again.lines().all(|l| l.len() <= 64), "{again}");
}
