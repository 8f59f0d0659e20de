use proptest::prelude::*;

use super::*;

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

#[test]
fn tokens_parse_only_in_kubeadms_form_and_debug_hides_the_secret() {
    let t: TokenString = "abcdef.0123456789abcdef".parse().unwrap();
    assert_eq!((t.id(), t.secret()), ("abcdef", "0123456789abcdef"));
    assert_eq!(t.to_string(), "abcdef.0123456789abcdef");
    assert_eq!(format!("{t:?}"), "abcdef.<secret>");
    for bad in [
        "",
        "abcdef",
        "abcdef.",
        "ABCDEF.0123456789abcdef",
        "abcde.0123456789abcdef",
        "abcdef.0123456789abcde",
        "abcdef.0123456789abcdef0",
        "abcdef:0123456789abcdef",
        "abcdéf.0123456789abcdef",
        "abcdef.0123456789abcdef.x",
    ] {
        assert!(bad.parse::<TokenString>().is_err(), "{bad:?}");
    }
    assert_eq!(token_id("abcdef").unwrap(), "abcdef");
    assert_eq!(token_id("abcdef.0123456789abcdef").unwrap(), "abcdef");
    assert!(matches!(token_id("abc"), Err(TokenError::MalformedId(_))));
}

#[test]
fn generated_tokens_are_well_formed_and_differ() {
    let a = TokenString::generate().unwrap();
    let b = TokenString::generate().unwrap();
    assert_eq!(a.to_string().parse::<TokenString>().unwrap(), a);
    assert_ne!(a, b);
}

#[test]
fn the_secret_is_the_one_kubeadm_writes() {
    let token = BootstrapToken {
        description: "for edge-c1".into(),
        ..BootstrapToken::new(
            "abcdef.0123456789abcdef".parse().unwrap(),
            Some(Duration::from_secs(3600)),
            at("2026-12-01T10:00:00Z"),
        )
        .unwrap()
    };
    let secret = token.to_secret();
    assert_eq!(
        secret.metadata.name.as_deref(),
        Some("bootstrap-token-abcdef")
    );
    assert_eq!(secret.metadata.namespace.as_deref(), Some("kube-system"));
    assert_eq!(
        secret.type_.as_deref(),
        Some("bootstrap.kubernetes.io/token")
    );
    let data: BTreeMap<String, String> = secret
        .data
        .clone()
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
        .collect();
    let want: BTreeMap<String, String> = [
        ("token-id", "abcdef"),
        ("token-secret", "0123456789abcdef"),
        ("description", "for edge-c1"),
        ("expiration", "2026-12-01T11:00:00Z"),
        ("usage-bootstrap-signing", "true"),
        ("usage-bootstrap-authentication", "true"),
        (
            "auth-extra-groups",
            "system:bootstrappers:kubeadm:default-node-token",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(data, want);
    assert_eq!(BootstrapToken::from_secret(&secret).unwrap(), token);
    // No TTL (or 0): never expires, and no expiration key.
    let forever =
        BootstrapToken::new(token.token.clone(), Some(Duration::ZERO), Timestamp::now()).unwrap();
    assert_eq!(forever.expires, None);
    let data = forever.to_secret().data.unwrap();
    assert!(!data.contains_key("expiration"));
}

#[test]
fn secrets_that_are_not_readable_tokens_say_why() {
    let good = BootstrapToken::new(
        "abcdef.0123456789abcdef".parse().unwrap(),
        None,
        Timestamp::now(),
    )
    .unwrap()
    .to_secret();
    let mut renamed = good.clone();
    renamed.metadata.name = Some("bootstrap-token-zzzzzz".into());
    let mut short_secret = good.clone();
    short_secret
        .data
        .as_mut()
        .unwrap()
        .insert("token-secret".into(), ByteString(b"short".to_vec()));
    let mut bad_expiry = good.clone();
    bad_expiry
        .data
        .as_mut()
        .unwrap()
        .insert("expiration".into(), ByteString(b"tomorrow".to_vec()));
    let mut no_id = good;
    no_id.data.as_mut().unwrap().remove("token-id");
    for (secret, why) in [
        (renamed, "not named bootstrap-token-abcdef"),
        (short_secret, "malformed"),
        (bad_expiry, "expiration \"tomorrow\""),
        (no_id, "no token-id"),
    ] {
        let err = BootstrapToken::from_secret(&secret)
            .unwrap_err()
            .to_string();
        assert!(err.contains(why), "{err}");
    }
}

#[test]
fn groups_need_the_authentication_usage_and_a_huge_ttl_is_refused() {
    let mut token = BootstrapToken::new(
        "abcdef.0123456789abcdef".parse().unwrap(),
        None,
        Timestamp::now(),
    )
    .unwrap();
    assert!(token.validate().is_ok());
    token.usages = vec!["signing".into()];
    assert!(matches!(
        token.validate(),
        Err(TokenError::GroupsWithoutAuthentication)
    ));
    token.groups.clear();
    assert!(token.validate().is_ok());
    let huge = BootstrapToken::new(
        token.token.clone(),
        Some(Duration::from_secs(90_000_000 * 3600)),
        Timestamp::now(),
    );
    assert!(matches!(huge, Err(TokenError::Ttl(_))), "{huge:?}");
}

#[test]
fn usages_and_groups_are_checked_as_the_api_server_would() {
    assert!(validate_usages(&["signing".into(), "authentication".into()]).is_ok());
    assert!(matches!(
        validate_usages(&["admin".into()]),
        Err(TokenError::Usage(u)) if u == "admin"
    ));
    for good in [
        DEFAULT_GROUP,
        "system:bootstrappers:edge-pool-a",
        "system:bootstrappers:a",
    ] {
        assert!(validate_groups(&[good.into()]).is_ok(), "{good}");
    }
    for bad in [
        "system:masters",
        "system:bootstrappers:",
        "system:bootstrappers:Edge",
        "system:bootstrappers:edge-",
        "system:bootstrappers:edge_pool",
    ] {
        assert!(validate_groups(&[bad.into()]).is_err(), "{bad}");
    }
}

#[test]
fn a_fresh_tokens_ttl_rounds_down_as_kubeadm_lists_it() {
    let made = at("2026-12-01T10:00:00Z");
    let token = BootstrapToken::new(
        "abcdef.0123456789abcdef".parse().unwrap(),
        Some(Duration::from_secs(2 * 3600)),
        made,
    )
    .unwrap();
    let listed = |now: &str| row_ttl(&table(std::slice::from_ref(&token), at(now)));
    assert_eq!(listed("2026-12-01T10:00:00.2Z"), "1h");
    assert_eq!(listed("2026-12-01T10:00:00Z"), "2h");
}

fn row_ttl(table: &str) -> String {
    table
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

#[test]
fn the_list_reads_like_kubeadms() {
    let now = at("2026-12-01T10:00:00Z");
    let mut described = BootstrapToken::new(
        "abcdef.0123456789abcdef".parse().unwrap(),
        Some(Duration::from_secs(23 * 3600 + 59 * 60)),
        now,
    )
    .unwrap();
    described.description = "pool a".into();
    let bare = BootstrapToken {
        expires: None,
        usages: Vec::new(),
        groups: Vec::new(),
        ..BootstrapToken::new("zzzzzz.0123456789abcdef".parse().unwrap(), None, now).unwrap()
    };
    let text = table(&[described, bare], now);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    let header = "TOKEN                     TTL         EXPIRES                USAGES                   DESCRIPTION                                                EXTRA GROUPS";
    assert_eq!(lines[0], header);
    assert_eq!(
        lines[1],
        "abcdef.0123456789abcdef   23h         2026-12-02T09:59:00Z   authentication,signing   pool a                                                     system:bootstrappers:kubeadm:default-node-token"
    );
    // Aligned on its own, as each kubeadm row is: `<never>` needs no 23 columns.
    assert!(
        lines[2].starts_with("zzzzzz.0123456789abcdef   <forever>   <never>   <none>   "),
        "{}",
        lines[2]
    );
    assert_eq!(table(&[], now), "");
    assert!(lines[2].ends_with("   <none>"), "{}", lines[2]);
}

proptest! {
    // Any token kubeadm could write reads back as itself.
    #[test]
    fn secrets_round_trip(
        token in "[a-z0-9]{6}\\.[a-z0-9]{16}",
        description in "\\PC{0,40}",
        ttl in proptest::option::of(1u64..10_000_000),
        signing in any::<bool>(),
        groups in proptest::collection::vec("system:bootstrappers:[a-z0-9]{1,12}", 0..3),
    ) {
        let mut t = BootstrapToken::new(
            token.parse().unwrap(),
            ttl.map(Duration::from_secs),
            at("2026-01-01T00:00:00Z"),
        )
        .unwrap();
        t.description = description;
        if !signing {
            t.usages.retain(|u| u != "signing");
        }
        t.groups = groups;
        let back = BootstrapToken::from_secret(&t.to_secret()).unwrap();
        let mut want = t.clone();
        want.usages.sort();
        let mut got = back;
        got.usages.sort();
        prop_assert_eq!(got, want);
    }
}
