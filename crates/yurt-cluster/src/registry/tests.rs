use super::*;

fn files() -> RegistryFiles {
    RegistryFiles {
        storage: PathBuf::from("/data/cloud/registry"),
        cert: PathBuf::from("/pki/registry.crt"),
        key: PathBuf::from("/pki/registry.key"),
        htpasswd: PathBuf::from("/pki/registry-push.htpasswd"),
    }
}

fn yaml(role: Role) -> serde_yaml::Value {
    serde_yaml::from_str(&config(role, &files())).expect("valid YAML")
}

#[test]
fn the_pull_process_is_read_only_and_unauthenticated_and_the_push_process_needs_the_password() {
    let pull = yaml(Role::Pull);
    assert_eq!(pull["http"]["addr"], "0.0.0.0:5000");
    assert_eq!(pull["storage"]["maintenance"]["readonly"]["enabled"], true);
    assert_eq!(
        pull["storage"]["maintenance"]["uploadpurging"]["enabled"], false,
        "a read-only process deletes nothing"
    );
    assert_eq!(pull["storage"]["delete"]["enabled"], false);
    assert!(pull.get("auth").is_none());
    assert!(
        pull.get("storage").and_then(|s| s.get("cache")).is_none(),
        "no descriptor cache: pushes are seen at once"
    );

    let push = yaml(Role::Push);
    assert_eq!(push["http"]["addr"], "0.0.0.0:5001");
    assert_eq!(push["storage"]["maintenance"]["readonly"]["enabled"], false);
    assert_eq!(
        push["auth"]["htpasswd"]["path"],
        "/pki/registry-push.htpasswd"
    );
    for v in [&pull, &push] {
        assert_eq!(
            v["storage"]["filesystem"]["rootdirectory"],
            "/data/cloud/registry"
        );
        assert_eq!(v["http"]["tls"]["certificate"], "/pki/registry.crt");
        assert_eq!(v["http"]["tls"]["key"], "/pki/registry.key");
    }
}

#[test]
fn paths_with_spaces_and_quotes_stay_one_yaml_string() {
    let mut f = files();
    f.storage = PathBuf::from("/data/my fleet/\"x\": y");
    let v: serde_yaml::Value = serde_yaml::from_str(&config(Role::Pull, &f)).expect("valid YAML");
    assert_eq!(
        v["storage"]["filesystem"]["rootdirectory"],
        "/data/my fleet/\"x\": y"
    );
}

#[test]
fn containerd_sends_every_mirrored_name_and_the_registry_itself_to_the_pull_process_only() {
    let hosts = containerd_hosts(Path::new("/pki/ca.crt"));
    let names: Vec<&str> = hosts.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        names,
        [
            "docker.io/hosts.toml",
            "registry.k8s.io/hosts.toml",
            "k8s.gcr.io/hosts.toml",
            "yurt.local/hosts.toml",
            "10.10.0.1:5000/hosts.toml"
        ]
    );
    for (_, text) in &hosts {
        let v: toml::Table = text.parse().expect("valid TOML");
        assert_eq!(v["server"].as_str(), Some("https://10.10.0.1:5000"));
        assert_eq!(v["ca"].as_str(), Some("/pki/ca.crt"));
        let caps: Vec<&str> = v["capabilities"]
            .as_array()
            .expect("capabilities")
            .iter()
            .filter_map(|c| c.as_str())
            .collect();
        assert_eq!(caps, ["pull", "resolve"], "never push through a node");
        let hosts = v["host"]
            .as_table()
            .expect("a host table (containerd 1.6 needs one)");
        let only: Vec<&String> = hosts.keys().collect();
        assert_eq!(
            only,
            ["https://10.10.0.1:5000"],
            "no other server to fall back to"
        );
        let host = &hosts["https://10.10.0.1:5000"];
        assert_eq!(host["ca"].as_str(), Some("/pki/ca.crt"));
        assert_eq!(host["capabilities"], v["capabilities"]);
    }
}

#[test]
fn push_credentials_are_made_once_private_and_bcrypt_hashed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    ensure_push_credentials(dir.path()).expect("created");
    let first = push_credentials(dir.path()).expect("readable");
    assert_eq!(first.user, PUSH_USER);
    assert_eq!(first.password.len(), 48);
    for f in [password_file(dir.path()), htpasswd_file(dir.path())] {
        let mode = std::fs::metadata(&f).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    let line = std::fs::read_to_string(htpasswd_file(dir.path())).expect("htpasswd");
    let (user, hash) = line.trim().split_once(':').expect("user:hash");
    assert_eq!(user, PUSH_USER);
    assert!(bcrypt::verify(&first.password, hash).expect("a bcrypt hash"));
    assert!(!bcrypt::verify("guess", hash).expect("a bcrypt hash"));

    ensure_push_credentials(dir.path()).expect("kept");
    assert_eq!(
        push_credentials(dir.path()).expect("readable").password,
        first.password,
        "a restarted fleet keeps its password"
    );
    assert_eq!(
        std::fs::read_to_string(htpasswd_file(dir.path())).expect("htpasswd"),
        line,
        "nor rehashes it"
    );
    // An entry of an older fleet, hashed at the usual cost: rehashed, same password.
    let slow = bcrypt::hash(&first.password, 12).expect("hash");
    std::fs::write(htpasswd_file(dir.path()), format!("{PUSH_USER}:{slow}\n")).expect("w");
    ensure_push_credentials(dir.path()).expect("rehashed");
    let line = std::fs::read_to_string(htpasswd_file(dir.path())).expect("htpasswd");
    assert!(line.starts_with(&format!("{PUSH_USER}:$2b$04$")), "{line}");
    assert_eq!(
        push_credentials(dir.path()).expect("r").password,
        first.password
    );
}

#[test]
fn image_names_land_in_the_one_storage_of_every_mirrored_registry() {
    let d = destination("busybox").expect("short name");
    assert_eq!(
        (d.name.as_str(), d.repository.as_str(), d.tag.as_deref()),
        (
            "docker.io/library/busybox:latest",
            "library/busybox",
            Some("latest")
        )
    );
    let d = destination("registry.k8s.io/pause:3.2").expect("k8s");
    assert_eq!(
        (d.repository.as_str(), d.tag.as_deref()),
        ("pause", Some("3.2"))
    );
    let d = destination("yurt.local/sample-web:1").expect("own");
    assert_eq!(d.repository, "sample-web");
    let digest = format!("sha256:{}", "a".repeat(64));
    let d = destination(&format!("myorg/app@{digest}")).expect("digest");
    assert_eq!(
        (d.repository.as_str(), d.tag, d.digest.as_deref()),
        ("myorg/app", None, Some(digest.as_str()))
    );
    assert!(
        destination("10.10.0.1:5000/app:1").is_ok(),
        "the registry itself"
    );
    for bad in ["quay.io/app:1", "Hello/x:1", "app:", "UPPER:1", "a b:1", ""] {
        let e = destination(bad).expect_err(bad).to_string();
        assert!(!e.contains('\n'), "{e}");
    }
}
