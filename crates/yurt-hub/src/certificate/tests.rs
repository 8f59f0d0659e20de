use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::routing::{get, post};
use base64::Engine as _;
use tokio_util::sync::CancellationToken;

use super::csr::{
    CLIENT_CURRENT_FILE, CLIENT_SIGNER, CLIENT_USAGES, CURRENT_FILE, CsrCertificate, CsrRequest,
    Purpose, SIGNER, USAGES,
};
use super::*;

/// A CA that signs what it is asked, for `lifetime`.
struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl TestCa {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: rcgen::Issuer::new(params, key),
            pem,
        }
    }

    /// A leaf for `name` with a fresh key: (certificate PEM, key PEM).
    fn leaf(&self, name: &str, lifetime: Duration) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::seconds(1);
        params.not_after = now + lifetime;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Signs a PEM CSR as given.
    fn sign(&self, csr_pem: &str, lifetime: Duration) -> String {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        let now = time::OffsetDateTime::now_utc();
        csr.params.not_before = now - time::Duration::seconds(1);
        csr.params.not_after = now + lifetime;
        csr.signed_by(&self.issuer).unwrap().pem()
    }
}

#[test]
fn a_certificate_loads_only_with_its_own_key() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("a", Duration::from_secs(3600));
    let (_, other_key) = ca.leaf("b", Duration::from_secs(3600));
    let loaded = Loaded::from_pem("t", cert.as_bytes(), key.as_bytes()).unwrap();
    let now = unix_now();
    assert!(loaded.valid_at(now) && !loaded.valid_at(now + 7200));
    assert!((loaded.not_after - loaded.not_before - 3601).abs() <= 1);
    // One file holding both, as kubelet-client-current.pem does.
    let both = format!("{cert}{key}");
    assert!(Loaded::from_pem("t", both.as_bytes(), both.as_bytes()).is_ok());
    let mismatch = Loaded::from_pem("t", cert.as_bytes(), other_key.as_bytes()).unwrap_err();
    assert!(
        mismatch.to_string().contains("does not match"),
        "{mismatch}"
    );
    assert!(Loaded::from_pem("t", b"junk", key.as_bytes()).is_err());
    assert!(Loaded::from_pem("t", cert.as_bytes(), b"junk").is_err());
}

#[test]
fn renewal_falls_between_seventy_and_ninety_percent_of_the_lifetime() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("a", Duration::from_secs(1000));
    let loaded = Loaded::from_pem("t", cert.as_bytes(), key.as_bytes()).unwrap();
    let lifetime = loaded.not_after - loaded.not_before;
    let fresh = loaded.not_before;
    assert_eq!(loaded.renew_at(0.0, fresh), fresh + lifetime / 2);
    assert_eq!(loaded.renew_at(1.0, fresh), loaded.not_after);
    for _ in 0..1000 {
        let f = renewal_fraction();
        assert!((0.7..=0.9).contains(&f), "{f}");
        let at = loaded.renew_at(f, fresh) - loaded.not_before;
        assert!(
            at * 10 >= lifetime * 7 - 10 && at * 10 <= lifetime * 9,
            "{at}"
        );
    }
    // Issued backdated (kube-controller-manager 1.20 moves notBefore five minutes back):
    // six minutes signed, one left. Not due at once: halfway through what is left.
    let backdated = Loaded {
        not_before: 1_000,
        not_after: 1_360,
        ..loaded
    };
    assert_eq!(backdated.renew_at(0.8, 1_300), 1_330);
}

#[test]
fn followed_files_swap_in_a_rotation_and_keep_the_last_good_pair_over_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let path = dir.path().join("kubelet-client-current.pem");
    let (cert, key) = ca.leaf("first", Duration::from_secs(3600));
    std::fs::write(&path, format!("{cert}{key}")).unwrap();
    let files = FollowedFiles::load("client certificate", &path, &path).unwrap();
    let slot = files.slot();
    let first = slot.get().unwrap().key.cert[0].clone();
    assert!(!files.reload().unwrap(), "unchanged files are not a change");

    // Rotated, as kubelet does: a new pair in place.
    let (cert2, key2) = ca.leaf("second", Duration::from_secs(3600));
    std::fs::write(&path, format!("{cert2}{key2}")).unwrap();
    assert!(files.reload().unwrap());
    let second = slot.get().unwrap().key.cert[0].clone();
    assert_ne!(first, second);

    // Caught half-written, or a key of another certificate: the last good pair stays.
    for bad in [cert2[..cert2.len() / 2].to_owned(), format!("{cert}{key2}")] {
        std::fs::write(&path, bad).unwrap();
        assert!(files.reload().is_err());
        assert_eq!(slot.get().unwrap().key.cert[0], second);
    }
    std::fs::remove_file(&path).unwrap();
    assert!(files.reload().is_err());
    assert!(slot.ready());
}

/// The certificate a TLS server configured with `slot` presents to a new connection.
async fn presented(slot: &Arc<CertSlot>, ca_pem: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.crt");
    std::fs::write(&ca_path, ca_pem).unwrap();
    let server = crate::tls::server_config_with(slot.clone(), &ca_path).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let serve = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = acceptor.accept(tcp).await;
    });
    let client = crate::tls::client_config(&ca_path, None).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect("hub.test".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let cert = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    drop(tls);
    serve.await.unwrap();
    cert
}

#[tokio::test]
async fn a_swapped_serving_certificate_is_presented_from_the_next_connection() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("hub.test", Duration::from_secs(3600));
    let slot = Arc::new(CertSlot::with(
        Loaded::from_pem("t", cert.as_bytes(), key.as_bytes()).unwrap(),
    ));
    let before = presented(&slot, &ca.pem).await;
    let (cert2, key2) = ca.leaf("hub.test", Duration::from_secs(3600));
    slot.set(Loaded::from_pem("t", cert2.as_bytes(), key2.as_bytes()).unwrap());
    let after = presented(&slot, &ca.pem).await;
    assert_ne!(before, after);
    assert_eq!(after, slot.get().unwrap().key.cert[0].to_vec());
}

/// A fake API server for CSRs: records each request; signs it (for `lifetime`) on the
/// first GET after `approve_after` GETs, denies it, or never answers, as told.
#[derive(Clone)]
struct FakeApi {
    ca: Arc<TestCa>,
    csrs: Arc<Mutex<BTreeMap<String, serde_json::Value>>>,
    gets: Arc<Mutex<BTreeMap<String, usize>>>,
    behaviour: Behaviour,
    lifetime: Duration,
}

#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    Sign,
    Deny,
    Ignore,
}

type JsonReply = ([(http::header::HeaderName, &'static str); 1], String);

fn reply(body: &serde_json::Value) -> JsonReply {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

async fn create_csr(State(api): State<FakeApi>, body: axum::body::Bytes) -> JsonReply {
    let mut body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let mut csrs = api.csrs.lock().unwrap();
    let name = format!("csr-{:05}", csrs.len());
    body["metadata"]["name"] = name.clone().into();
    csrs.insert(name, body.clone());
    reply(&body)
}

/// A watch of one CSR (`fieldSelector=metadata.name=<name>`): one MODIFIED event with
/// what a GET would answer now, then the end of the stream.
async fn watch_csr(
    State(api): State<FakeApi>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> JsonReply {
    let query = query.unwrap_or_default();
    let name = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("fieldSelector=metadata.name%3D"))
        .or_else(|| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix("fieldSelector=metadata.name="))
        })
        .unwrap()
        .to_owned();
    let (_, object) = get_csr(State(api), UrlPath(name)).await;
    let event = serde_json::json!({"type": "MODIFIED", "object": serde_json::from_str::<serde_json::Value>(&object).unwrap()});
    reply(&event)
}

async fn get_csr(State(api): State<FakeApi>, UrlPath(name): UrlPath<String>) -> JsonReply {
    let gets = {
        let mut gets = api.gets.lock().unwrap();
        let n = gets.entry(name.clone()).or_default();
        *n += 1;
        *n
    };
    let mut body = api.csrs.lock().unwrap()[&name].clone();
    if gets >= 2 {
        match api.behaviour {
            Behaviour::Sign => {
                let request = base64::engine::general_purpose::STANDARD
                    .decode(body["spec"]["request"].as_str().unwrap())
                    .unwrap();
                let cert = api
                    .ca
                    .sign(std::str::from_utf8(&request).unwrap(), api.lifetime);
                body["status"] = serde_json::json!({
                    "conditions": [{"type": "Approved", "status": "True"}],
                    "certificate": base64::engine::general_purpose::STANDARD.encode(cert),
                });
            }
            Behaviour::Deny => {
                body["status"] = serde_json::json!({
                    "conditions": [{"type": "Denied", "status": "True", "message": "not yours"}],
                });
            }
            Behaviour::Ignore => {}
        }
    }
    reply(&body)
}

async fn fake_api(behaviour: Behaviour, lifetime: Duration) -> (FakeApi, kube::Client) {
    let api = FakeApi {
        ca: Arc::new(TestCa::new()),
        csrs: Arc::default(),
        gets: Arc::default(),
        behaviour,
        lifetime,
    };
    let base = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
    let app = axum::Router::new()
        .route(base, post(create_csr).get(watch_csr))
        .route(&format!("{base}/{{name}}"), get(get_csr))
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url: http::Uri = format!("http://{}", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client =
        crate::upstream::kube_client::plain(url, crate::upstream::kube_client::Timeouts::default());
    (api, client)
}

fn request(dir: &std::path::Path, issue_timeout: Duration) -> CsrRequest {
    CsrRequest {
        purpose: Purpose::Serving,
        node: "edge-a1".to_owned(),
        ips: vec![std::net::IpAddr::from([169, 254, 2, 1])],
        dir: dir.to_owned(),
        issue_timeout,
        poll_interval: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_serving_certificate_is_asked_for_stored_and_renewed_before_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let (api, client) = fake_api(Behaviour::Sign, Duration::from_secs(12)).await;
    let serving = Arc::new(CsrCertificate::new(request(
        dir.path(),
        Duration::from_secs(10),
    )));
    let slot = serving.slot();
    assert!(!slot.ready(), "no certificate before the first is issued");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serving.clone().run(vec![client], shutdown.clone()));
    eventually("the first certificate", || slot.ready()).await;

    // What was asked: kubelet-serving, the three usages, this node, the pod address.
    let first = api.csrs.lock().unwrap()["csr-00000"].clone();
    assert_eq!(first["spec"]["signerName"], SIGNER);
    assert_eq!(first["spec"]["usages"], serde_json::json!(USAGES));
    assert_eq!(first["metadata"]["generateName"], "csr-");
    let pem = base64::engine::general_purpose::STANDARD
        .decode(first["spec"]["request"].as_str().unwrap())
        .unwrap();
    let parsed =
        rcgen::CertificateSigningRequestParams::from_pem(std::str::from_utf8(&pem).unwrap())
            .unwrap();
    let dn: Vec<_> = parsed
        .params
        .distinguished_name
        .iter()
        .map(|(t, v)| (t.clone(), v.clone()))
        .collect();
    assert!(
        dn.contains(&(
            rcgen::DnType::CommonName,
            rcgen::DnValue::Utf8String("system:node:edge-a1".into())
        )),
        "{dn:?}"
    );
    assert!(
        dn.contains(&(
            rcgen::DnType::OrganizationName,
            rcgen::DnValue::Utf8String("system:nodes".into())
        )),
        "{dn:?}"
    );
    assert_eq!(
        parsed.params.subject_alt_names,
        vec![rcgen::SanType::IpAddress([169, 254, 2, 1].into())]
    );

    // Stored with its key, readable by root only.
    let stored = dir.path().join(CURRENT_FILE);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&stored).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let issued = slot.get().unwrap().key.cert[0].clone();

    // Renewed at 70–90 % of its 13 s (issued 1 s backdated; less than 10 s left would be refused): a second request, a new certificate in the slot.
    eventually("a renewal", || api.csrs.lock().unwrap().len() >= 2).await;
    eventually("the renewed certificate", || {
        slot.get().unwrap().key.cert[0] != issued
    })
    .await;
    assert!(slot.ready());
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn a_stored_certificate_is_used_at_once_after_a_restart_and_only_if_it_fits() {
    let dir = tempfile::tempdir().unwrap();
    let (api, client) = fake_api(Behaviour::Sign, Duration::from_secs(3600)).await;
    let serving = Arc::new(CsrCertificate::new(request(
        dir.path(),
        Duration::from_secs(10),
    )));
    let slot = serving.slot();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serving.run(vec![client], shutdown.clone()));
    eventually("the first certificate", || slot.ready()).await;
    shutdown.cancel();
    task.await.unwrap();

    // Restarted: the stored certificate, without asking.
    let asked = api.csrs.lock().unwrap().len();
    let again = CsrCertificate::new(request(dir.path(), Duration::from_secs(10)));
    assert!(again.slot().ready());
    assert_eq!(api.csrs.lock().unwrap().len(), asked);

    // Another node name or another pod address: not that one.
    let mut renamed = request(dir.path(), Duration::from_secs(10));
    renamed.node = "edge-b1".to_owned();
    assert!(CsrCertificate::new(renamed).slot().get().is_none());
    let mut moved = request(dir.path(), Duration::from_secs(10));
    moved.ips = vec![std::net::IpAddr::from([169, 254, 2, 2])];
    assert!(CsrCertificate::new(moved).slot().get().is_none());
}

#[tokio::test]
async fn a_denied_or_unanswered_request_leaves_the_hub_not_ready_and_is_asked_again() {
    for behaviour in [Behaviour::Deny, Behaviour::Ignore] {
        let dir = tempfile::tempdir().unwrap();
        let (api, client) = fake_api(behaviour, Duration::from_secs(3600)).await;
        let serving = Arc::new(CsrCertificate::new(request(
            dir.path(),
            Duration::from_millis(300),
        )));
        let slot = serving.slot();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serving.run(vec![client], shutdown.clone()));
        eventually("a new request after the first failed", || {
            api.csrs.lock().unwrap().len() >= 3
        })
        .await;
        assert!(!slot.ready());
        assert!(!dir.path().join(CURRENT_FILE).exists());
        shutdown.cancel();
        task.await.unwrap();
    }
}

#[test]
fn an_expired_or_corrupt_stored_certificate_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let stored = dir.path().join(CURRENT_FILE);
    std::fs::write(&stored, "garbage").unwrap();
    assert!(
        !CsrCertificate::new(request(dir.path(), Duration::from_secs(1)))
            .slot()
            .ready()
    );
    let (cert, key) = ca.leaf("x", Duration::from_secs(1));
    std::fs::write(&stored, format!("{cert}{key}")).unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    assert!(
        CsrCertificate::new(request(dir.path(), Duration::from_secs(1)))
            .slot()
            .get()
            .is_none()
    );
}

fn client_request(dir: &std::path::Path) -> CsrRequest {
    CsrRequest {
        purpose: Purpose::Client,
        ips: Vec::new(),
        ..request(dir, Duration::from_secs(10))
    }
}

#[tokio::test]
async fn the_hubs_own_client_certificate_replaces_kubelets_once_issued() {
    let dir = tempfile::tempdir().unwrap();
    let (api, client) = fake_api(Behaviour::Sign, Duration::from_secs(3600)).await;
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("system:node:edge-a1", Duration::from_secs(3600));
    let kubelets = Loaded::from_pem("kubelet", cert.as_bytes(), key.as_bytes()).unwrap();
    let own = Arc::new(
        CsrCertificate::new(client_request(dir.path())).with_stand_in(Some(kubelets.clone())),
    );
    let slot = own.slot();
    // Kubelet's stands in, so requests go out as the node; the hub is not ready on it.
    assert_eq!(slot.get().unwrap().key.cert, kubelets.key.cert);
    assert!(slot.ready() && !own.ready());

    let shutdown = CancellationToken::new();
    let task = tokio::spawn(own.clone().run(vec![client], shutdown.clone()));
    eventually("the hub's own client certificate", || own.ready()).await;
    assert_ne!(slot.get().unwrap().key.cert, kubelets.key.cert);
    assert!(dir.path().join(CLIENT_CURRENT_FILE).exists());
    assert!(!dir.path().join(CURRENT_FILE).exists());

    // What was asked: a client certificate of this node in both groups, no address.
    let first = api.csrs.lock().unwrap()["csr-00000"].clone();
    assert_eq!(first["spec"]["signerName"], CLIENT_SIGNER);
    assert_eq!(first["spec"]["usages"], serde_json::json!(CLIENT_USAGES));
    let pem = base64::engine::general_purpose::STANDARD
        .decode(first["spec"]["request"].as_str().unwrap())
        .unwrap();
    let (_, der) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let (_, csr) =
        <x509_parser::certification_request::X509CertificationRequest as x509_parser::prelude::FromDer<_>>::from_der(&der.contents)
            .unwrap();
    let subject = &csr.certification_request_info.subject;
    let organizations: Vec<&str> = subject
        .iter_organization()
        .map(|o| o.as_str().unwrap())
        .collect();
    assert_eq!(organizations, vec!["system:nodes", "openyurt:yurthub"]);
    assert_eq!(
        subject
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok()),
        Some("system:node:edge-a1")
    );
    assert!(
        csr.requested_extensions()
            .is_none_or(|mut e| e.next().is_none())
    );
    shutdown.cancel();
    task.await.unwrap();
}

#[test]
fn a_stored_client_certificate_is_the_hubs_own_only_with_both_groups() {
    use yurt_core::pki::{CertSpec, CertificateAuthority};
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("test-ca").unwrap();
    let stored = dir.path().join(CLIENT_CURRENT_FILE);
    for (organizations, own) in [
        (vec!["system:nodes", "openyurt:yurthub"], true),
        (vec!["system:nodes"], false),
    ] {
        let issued = ca
            .issue(&CertSpec::client("system:node:edge-a1", &organizations))
            .unwrap();
        std::fs::write(&stored, format!("{}{}", issued.cert_pem, issued.key_pem)).unwrap();
        let kept = CsrCertificate::new(client_request(dir.path()));
        assert_eq!(kept.ready(), own, "{organizations:?}");
        // A stand-in never replaces a certificate of its own.
        let (cert, key) = TestCa::new().leaf("kubelet", Duration::from_secs(3600));
        let stand_in = Loaded::from_pem("kubelet", cert.as_bytes(), key.as_bytes()).unwrap();
        let kept = kept.with_stand_in(Some(stand_in.clone()));
        assert_eq!(
            kept.slot().get().unwrap().key.cert == stand_in.key.cert,
            !own
        );
    }
}
