use base64::Engine as _;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use super::*;

const ISSUER: &str = "https://kubernetes.default.svc";
const NOW: i64 = 1_800_000_000;

struct Signer {
    kid: String,
    key: EncodingKey,
    jwk: serde_json::Value,
}

fn signer(kid: &str) -> Signer {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    Signer {
        kid: kid.to_owned(),
        key: EncodingKey::from_ec_der(&pair.serialize_der()),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                    "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}),
    }
}

impl Signer {
    fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

fn keys(signers: &[&Signer]) -> IssuerKeys {
    let config = json!({"issuer": ISSUER, "jwks_uri": format!("{ISSUER}/openid/v1/jwks")});
    let jwks = json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()});
    IssuerKeys::from_documents(config.to_string().as_bytes(), jwks.to_string().as_bytes()).unwrap()
}

fn legacy(ns: &str, name: &str) -> serde_json::Value {
    json!({
        "iss": LEGACY_ISSUER,
        "sub": format!("system:serviceaccount:{ns}:{name}"),
        "kubernetes.io/serviceaccount/namespace": ns,
        "kubernetes.io/serviceaccount/secret.name": format!("{name}-token-abcde"),
        "kubernetes.io/serviceaccount/service-account.name": name,
        "kubernetes.io/serviceaccount/service-account.uid": "8b9f0c4e-0000-4000-8000-000000000001",
    })
}

fn bound(ns: &str, name: &str, aud: &str, exp: i64) -> serde_json::Value {
    json!({
        "iss": ISSUER, "aud": [aud], "exp": exp, "iat": exp - 3600, "nbf": exp - 3600,
        "sub": format!("system:serviceaccount:{ns}:{name}"),
        "kubernetes.io": {
            "namespace": ns,
            "pod": {"name": "web-1", "uid": "5d4c0000-0000-4000-8000-000000000002"},
            "serviceaccount": {"name": name, "uid": "8b9f0c4e-0000-4000-8000-000000000001"},
        },
    })
}

#[test]
fn legacy_and_bound_tokens_name_their_service_account() {
    let s = signer("k1");
    let k = keys(&[&s]);
    let sa = k
        .verify(&s.sign(&legacy("idt", "reader")), &[], NOW)
        .unwrap();
    assert_eq!(
        (sa.user(), sa.cache_owner(), sa.pod, sa.expires),
        (
            "system:serviceaccount:idt:reader".to_owned(),
            "sa:idt:reader".to_owned(),
            None,
            None
        )
    );
    let sa = k
        .verify(
            &s.sign(&bound("idt", "reader", ISSUER, NOW + 600)),
            &[],
            NOW,
        )
        .unwrap();
    assert_eq!(sa.name, "reader");
    assert_eq!(sa.expires, Some(NOW + 600));
    assert_eq!(sa.pod.map(|p| p.name).as_deref(), Some("web-1"));
}

#[test]
fn tokens_the_hub_cannot_prove_are_refused_with_the_reason() {
    let s = signer("k1");
    let other = signer("k1");
    let k = keys(&[&s]);
    let cases: Vec<(&str, String, TokenError)> = vec![
        (
            "signed by a key of someone else, same kid",
            other.sign(&legacy("idt", "reader")),
            TokenError::BadSignature,
        ),
        (
            "not a JWT",
            "abcdef.0123456789abcdef".into(),
            TokenError::Malformed(String::new()),
        ),
        (
            "expired",
            s.sign(&bound("idt", "reader", ISSUER, NOW - 1)),
            TokenError::Expired,
        ),
        (
            "for another audience",
            s.sign(&bound("idt", "reader", "vault", NOW + 600)),
            TokenError::WrongAudience,
        ),
        (
            "from another issuer",
            s.sign(&json!({"iss": "https://evil.example", "sub": "system:serviceaccount:a:b"})),
            TokenError::UnknownIssuer("https://evil.example".into()),
        ),
        (
            "subject naming another account",
            s.sign(&{
                let mut c = legacy("idt", "reader");
                c["sub"] = json!("system:serviceaccount:kube-system:admin");
                c
            }),
            TokenError::Claims("sub"),
        ),
        (
            "legacy without its secret",
            s.sign(&{
                let mut c = legacy("idt", "reader");
                c.as_object_mut()
                    .unwrap()
                    .remove("kubernetes.io/serviceaccount/secret.name");
                c
            }),
            TokenError::Claims("secret.name"),
        ),
        (
            "bound without expiry",
            s.sign(&{
                let mut c = bound("idt", "reader", ISSUER, NOW + 600);
                c.as_object_mut().unwrap().remove("exp");
                c
            }),
            TokenError::Claims("exp"),
        ),
    ];
    for (what, token, want) in cases {
        let got = k.verify(&token, &[], NOW);
        match (&got, &want) {
            (Err(TokenError::Malformed(_)), TokenError::Malformed(_)) => {}
            _ => assert_eq!(got, Err(want), "{what}"),
        }
    }
    let audiences = vec!["vault".to_owned()];
    assert!(
        k.verify(
            &s.sign(&bound("idt", "reader", "vault", NOW + 600)),
            &audiences,
            NOW
        )
        .is_ok(),
        "a configured audience is accepted"
    );
}

#[test]
fn the_verifier_remembers_answers_but_not_past_expiry_or_revocation() {
    let s = signer("k1");
    let v = Verifier::new(Vec::new());
    let token = s.sign(&bound("idt", "reader", ISSUER, NOW + 10));
    let header = format!("Bearer {token}");
    assert!(matches!(
        v.caller(Some(&header), NOW),
        Caller::Unproven(TokenError::NoKeys, _)
    ));
    assert!(matches!(v.caller(None, NOW), Caller::Anonymous));
    assert!(matches!(
        v.caller(Some("Basic abc"), NOW),
        Caller::Anonymous
    ));
    v.set_keys(keys(&[&s]));
    let Caller::ServiceAccount(sa, hash) = v.caller(Some(&header), NOW) else {
        panic!("a valid token is proven");
    };
    assert_eq!(sa.name, "reader");
    assert!(
        matches!(
            v.caller(Some(&header), NOW + 10),
            Caller::Unproven(TokenError::Expired, _)
        ),
        "a remembered token still expires"
    );
    v.revoke(&hash);
    assert!(matches!(
        v.caller(Some(&header), NOW),
        Caller::Unproven(TokenError::Revoked, _)
    ));
}

#[test]
fn unusable_documents_are_errors() {
    assert!(IssuerKeys::from_documents(b"{}", br#"{"keys":[]}"#).is_err());
    assert!(IssuerKeys::from_documents(br#"{"issuer":"x"}"#, br#"{"keys":[]}"#).is_err());
    assert!(IssuerKeys::from_documents(br#"{"issuer":"x"}"#, b"not json").is_err());
}

#[test]
fn bearer_tokens_come_from_the_authorization_header() {
    assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
    assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
    assert_eq!(bearer(Some("Bearer ")), None);
    assert_eq!(bearer(Some("Basic abc")), None);
    assert_eq!(bearer(None), None);
}
