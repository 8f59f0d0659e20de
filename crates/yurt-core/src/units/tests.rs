use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn a_lone_variable_becomes_its_words_and_a_braced_one_its_text() {
    let e = env(&[("ARGS", "  --a=1   --b=2 "), ("DIR", "/var/lib/x y")]);
    assert_eq!(expand("$ARGS", &e), vec!["--a=1", "--b=2"]);
    assert_eq!(expand("$UNSET", &e), Vec::<String>::new());
    assert_eq!(expand("--root=${DIR}/k", &e), vec!["--root=/var/lib/x y/k"]);
    assert_eq!(expand("${UNSET}x${DIR}", &e), vec!["x/var/lib/x y"]);
    // Not variables: left as they are.
    assert_eq!(expand("$", &e), vec!["$"]);
    assert_eq!(expand("$1x", &e), vec!["$1x"]);
    assert_eq!(expand("a$ARGS", &e), vec!["a$ARGS"]);
    assert_eq!(
        expand("${not a name}${DIR}", &e),
        vec!["${not a name}/var/lib/x y"]
    );
    assert_eq!(expand("${open", &e), vec!["${open"]);
    assert_eq!(expand("naïve ${DIR}é", &e), vec!["naïve /var/lib/x yé"]);
}

#[test]
fn environment_files_read_like_kubeadms() {
    let text = "# written by join\n\
                KUBELET_KUBEADM_ARGS=\"--network-plugin=cni --node-ip=10.20.0.100\"\n\
                \n\
                ; another comment\n\
                EMPTY=\n\
                SINGLE='a b'\n\
                 SPACED = x \n";
    assert_eq!(
        parse_environment_file(text).expect("parses"),
        vec![
            (
                "KUBELET_KUBEADM_ARGS".to_owned(),
                "--network-plugin=cni --node-ip=10.20.0.100".to_owned()
            ),
            ("EMPTY".to_owned(), String::new()),
            ("SINGLE".to_owned(), "a b".to_owned()),
            ("SPACED".to_owned(), "x".to_owned()),
        ]
    );
    let err = parse_environment_file("A=1\njust words\n").expect_err("no =");
    assert!(err.contains("line 2"), "{err}");
    let err = parse_environment_file("1A=1\n").expect_err("bad name");
    assert!(err.contains("line 1"), "{err}");
}

#[test]
fn a_unit_round_trips_and_its_command_line_reads_the_environment_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = dir.path().join("kubelet.env");
    std::fs::write(
        &flags,
        "KUBELET_ARGS=\"--v=2 --node-ip=10.20.0.100\"\nRUST_LOG=debug\n",
    )
    .expect("write");
    let unit = Unit {
        description: "kubelet of edge-x".into(),
        exec: vec![
            "/usr/bin/kubelet".into(),
            "--config=${CONF}/kubelet.yaml".into(),
            "$KUBELET_ARGS".into(),
        ],
        environment: env(&[("CONF", "/etc/kubernetes"), ("RUST_LOG", "info")]),
        environment_files: vec![flags.clone()],
        restart: Restart::Always,
    };
    let path = file(&super::dir(dir.path()), "kubelet");
    assert!(unit.save(&path).expect("save"), "a new file");
    assert!(!unit.save(&path).expect("save again"), "unchanged");
    let back = Unit::load(&path).expect("load");
    assert_eq!(back, unit);
    let line = back.command_line().expect("command line");
    assert_eq!(line.program, PathBuf::from("/usr/bin/kubelet"));
    assert_eq!(
        line.args,
        vec![
            OsString::from("--config=/etc/kubernetes/kubelet.yaml"),
            OsString::from("--v=2"),
            OsString::from("--node-ip=10.20.0.100"),
        ]
    );
    assert!(
        line.env
            .contains(&("RUST_LOG".to_owned(), "debug".to_owned())),
        "a file wins over the unit: {:?}",
        line.env
    );

    // The file is read at each start: an edit shows at the next one.
    std::fs::write(&flags, "KUBELET_ARGS=--v=4\n").expect("rewrite");
    assert_eq!(
        back.command_line().expect("command line").args,
        vec![
            OsString::from("--config=/etc/kubernetes/kubelet.yaml"),
            OsString::from("--v=4"),
        ]
    );
    std::fs::remove_file(&flags).expect("remove");
    let err = back.command_line().expect_err("missing file");
    assert!(err.to_string().contains("kubelet.env"), "{err}");
}

#[test]
fn a_unit_without_a_program_or_with_unknown_keys_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in [
        ("empty", "exec = []\n"),
        ("blank", "exec = [\" \"]\n"),
        ("unknown", "exec = [\"/bin/true\"]\nrestart_sec = 3\n"),
        (
            "policy",
            "exec = [\"/bin/true\"]\nrestart = \"sometimes\"\n",
        ),
        ("garbage", "\u{0}\u{1}not toml"),
    ] {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("write");
        let err = Unit::load(&path).expect_err(name);
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{name}: {err}"
        );
    }
    let path = dir.path().join("minimal.toml");
    std::fs::write(&path, "exec = [\"/bin/true\", \"x\"]\nrestart = \"no\"\n").expect("write");
    let unit = Unit::load(&path).expect("minimal");
    assert_eq!(unit.restart, Restart::No);
    assert!(unit.environment.is_empty() && unit.environment_files.is_empty());
}

#[test]
fn the_program_is_one_word_and_never_empty() {
    let unit = Unit {
        description: String::new(),
        exec: vec!["${BIN}/kubelet".into(), "$ARGS".into()],
        environment: env(&[("BIN", "/opt/k 8s"), ("ARGS", "--a --b")]),
        environment_files: Vec::new(),
        restart: Restart::Always,
    };
    let line = unit.command_line().expect("expands");
    assert_eq!(line.program, PathBuf::from("/opt/k 8s/kubelet"));
    assert_eq!(line.args.len(), 2);
    let empty = Unit {
        exec: vec!["${NOTHING}".into(), "--x".into()],
        environment: BTreeMap::new(),
        ..unit
    };
    let err = empty.command_line().expect_err("no program");
    assert!(err.to_string().contains("no program"), "{err}");
}

#[test]
fn the_fleets_command_lines_become_units_unchanged() {
    let line = CommandLine {
        program: "/usr/bin/containerd".into(),
        args: vec!["--config".into(), "/x/containerd.toml".into()],
        env: vec![("RUST_LOG".into(), "info".into())],
    };
    let unit = Unit::of("containerd", &line);
    let back = unit.command_line().expect("command line");
    assert_eq!(back.program, line.program);
    assert_eq!(back.args, line.args);
    assert_eq!(back.env, line.env);
}
