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
}
