use super::*;

fn node(labels: &[(&str, &str)]) -> Node {
    let mut n = Node::default();
    n.metadata.name = Some("edge-z".into());
    n.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    );
    n
}

fn pools(name: &str) -> Option<NodePoolType> {
    match name {
        "pool-a" => Some(NodePoolType::Edge),
        "cloud" => Some(NodePoolType::Cloud),
        _ => None,
    }
}

#[test]
fn the_pool_label_converts_and_its_removal_reverts() {
    let plain_in_pool = node(&[(NODE_POOL, "pool-a"), (IS_EDGE_WORKER, "false")]);
    assert_eq!(
        wanted(&plain_in_pool, pools, None),
        Wanted::Convert("pool-a".into())
    );
    assert_eq!(
        wanted(&node(&[(NODE_POOL, "pool-a")]), pools, None),
        Wanted::Convert("pool-a".into())
    );
    let edge = node(&[(NODE_POOL, "pool-a"), (IS_EDGE_WORKER, "true")]);
    assert_eq!(wanted(&edge, pools, None), Wanted::Nothing);
    let edge_without_pool = node(&[(IS_EDGE_WORKER, "true")]);
    assert_eq!(wanted(&edge_without_pool, pools, None), Wanted::Revert);
    assert_eq!(wanted(&node(&[]), pools, None), Wanted::Nothing);
    assert_eq!(
        wanted(&node(&[(NODE_POOL, "cloud")]), pools, None),
        Wanted::Nothing,
        "Cloud pools are skipped"
    );
    assert_eq!(
        wanted(&node(&[(NODE_POOL, "later")]), pools, None),
        Wanted::UnknownPool("later".into())
    );
}

#[test]
fn a_failed_convert_whose_label_is_gone_reverts_and_a_failed_revert_whose_label_is_back_converts() {
    assert_eq!(wanted(&node(&[]), pools, Some("convert")), Wanted::Revert);
    assert_eq!(
        wanted(&node(&[(NODE_POOL, "pool-a")]), pools, Some("convert")),
        Wanted::Convert("pool-a".into()),
        "the same failed convert is reported, not retried (the action matches)"
    );
    let back = node(&[(NODE_POOL, "pool-a"), (IS_EDGE_WORKER, "true")]);
    assert_eq!(
        wanted(&back, pools, Some("revert")),
        Wanted::Convert("pool-a".into())
    );
    assert_eq!(
        wanted(&node(&[(IS_EDGE_WORKER, "true")]), pools, Some("revert")),
        Wanted::Revert
    );
    // A failed revert after a failed convert (no label, not edge) is reported, not
    // dropped; so is a failed convert after a failed revert (label back, still edge).
    assert_eq!(wanted(&node(&[]), pools, Some("revert")), Wanted::Revert);
    assert_eq!(
        wanted(&back, pools, Some("convert")),
        Wanted::Convert("pool-a".into())
    );
}

#[test]
fn the_job_runs_the_hosts_servant_pinned_privileged_and_bounded() {
    let j = job(
        "edge-z",
        "uid-z",
        Some("pool-a"),
        "busybox:1",
        Duration::from_secs(300),
    )
    .unwrap();
    assert_eq!(
        j.metadata.name.as_deref(),
        Some("node-servant-conversion-edge-z")
    );
    assert_eq!(j.metadata.namespace.as_deref(), Some("kube-system"));
    assert_eq!(
        j.labels().get(CONVERSION_NODE).map(String::as_str),
        Some("edge-z")
    );
    assert_eq!(
        j.annotations().get(CONVERSION_ACTION).map(String::as_str),
        Some("convert")
    );
    assert_eq!(
        j.annotations().get(CONVERSION_NODE_UID).map(String::as_str),
        Some("uid-z")
    );
    assert!(made_for(&j, "uid-z") && !made_for(&j, "uid-of-a-newer-edge-z"));
    let spec = j.spec.as_ref().unwrap();
    assert_eq!(spec.backoff_limit, Some(0));
    assert_eq!(spec.active_deadline_seconds, Some(480));
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.node_name.as_deref(), Some("edge-z"));
    assert_eq!((pod.host_network, pod.host_pid), (Some(true), Some(true)));
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    // An interrupted convert has time to restore the host.
    assert_eq!(pod.termination_grace_period_seconds, Some(150));
    let c = &pod.containers[0];
    assert_eq!(
        c.command.as_ref().unwrap().join(" "),
        "/bin/busybox chroot /openyurt /run/yurt-host/yurt node-servant convert --nodepool-name=pool-a --node-name=edge-z --timeout=300s"
    );
    assert_eq!(c.security_context.as_ref().unwrap().privileged, Some(true));
    let env: Vec<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert_eq!(env, ["POD_NAME", "POD_NAMESPACE"]);
    let volume = &pod.volumes.as_ref().unwrap()[0];
    assert_eq!(volume.host_path.as_ref().unwrap().path, "/");

    let r = job(
        "edge-z",
        "uid-z",
        None,
        "busybox:1",
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(
        r.annotations().get(CONVERSION_ACTION).map(String::as_str),
        Some("revert")
    );
    let cmd = r.spec.unwrap().template.spec.unwrap().containers[0]
        .command
        .clone()
        .unwrap()
        .join(" ");
    assert!(
        cmd.ends_with("node-servant revert --node-name=edge-z --timeout=60s"),
        "{cmd}"
    );
}

fn job_with(conditions: Value) -> Job {
    serde_json::from_value(json!({
        "metadata": {"name": "j"},
        "status": {"conditions": conditions},
    }))
    .unwrap()
}

#[test]
fn a_jobs_outcome_comes_from_its_true_conditions() {
    assert_eq!(outcome(&Job::default()), Outcome::Running);
    assert_eq!(outcome(&job_with(json!([]))), Outcome::Running);
    assert_eq!(
        outcome(&job_with(json!([{"type": "Complete", "status": "True"}]))),
        Outcome::Succeeded
    );
    assert_eq!(
        outcome(&job_with(json!([{"type": "Complete", "status": "False"}]))),
        Outcome::Running
    );
    assert_eq!(
        outcome(&job_with(
            json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}])
        )),
        Outcome::Failed("BackoffLimitExceeded: Job has reached the specified backoff limit".into())
    );
}

#[test]
fn a_finished_conversion_sets_or_clears_the_edge_label_and_the_pools_zone() {
    let converted = finished_labels(&node(&[(NODE_POOL, "pool-a")]), "convert", |_| true);
    assert_eq!(
        converted.get(IS_EDGE_WORKER),
        Some(&Some("true".to_owned()))
    );
    assert_eq!(
        converted.get(TOPOLOGY_ZONE),
        Some(&Some("pool-a".to_owned()))
    );
    let zoned = finished_labels(
        &node(&[(NODE_POOL, "pool-a"), (TOPOLOGY_ZONE, "rack-1")]),
        "convert",
        |_| true,
    );
    assert!(
        !zoned.contains_key(TOPOLOGY_ZONE),
        "a zone already set stays"
    );

    let reverted = finished_labels(
        &node(&[(IS_EDGE_WORKER, "true"), (TOPOLOGY_ZONE, "pool-a")]),
        "revert",
        |z| z == "pool-a",
    );
    assert_eq!(reverted.get(IS_EDGE_WORKER), Some(&None));
    assert_eq!(reverted.get(TOPOLOGY_ZONE), Some(&None));
    let other_zone = finished_labels(
        &node(&[(IS_EDGE_WORKER, "true"), (TOPOLOGY_ZONE, "rack-1")]),
        "revert",
        |z| z == "pool-a",
    );
    assert!(
        !other_zone.contains_key(TOPOLOGY_ZONE),
        "a zone not naming a pool stays"
    );
}

#[test]
fn long_node_names_give_job_names_and_labels_a_label_value_may_hold() {
    assert_eq!(job_name("edge-z"), "node-servant-conversion-edge-z");
    assert_eq!(node_label("edge-z"), "edge-z");
    let long = "ip-10-0-12-34.us-west-2.compute.internal";
    let name = job_name(long);
    assert!(
        name.len() <= 63 && name.starts_with("node-servant-conversion-ip-10-0-12"),
        "{name}"
    );
    assert_ne!(
        name,
        job_name("ip-10-0-12-34.us-west-2.compute.internalx"),
        "distinct names stay distinct"
    );
    assert_eq!(name, job_name(long), "stable");
    let very_long = "n".repeat(253);
    assert!(node_label(&very_long).len() <= 63);
    let j = job(long, "uid-long", None, "busybox:1", Duration::from_secs(60)).unwrap();
    assert_eq!(
        j.annotations()
            .get(CONVERSION_NODE_NAME)
            .map(String::as_str),
        Some(long)
    );
    assert!(
        j.labels()
            .get(CONVERSION_NODE)
            .is_some_and(|v| v.len() <= 63)
    );
}

#[test]
fn a_failure_outlives_its_job_in_the_nodes_condition() {
    let mut n = node(&[]);
    assert_eq!(failed_by_condition(&n), None);
    n.status = Some(
        serde_json::from_value(json!({"conditions": [
            {"type": CONDITION, "status": "True", "reason": "ConvertFailed"},
        ]}))
        .unwrap(),
    );
    assert_eq!(failed_by_condition(&n), Some("convert"));
    assert_eq!(wanted(&n, pools, failed_by_condition(&n)), Wanted::Revert);
    n.status = Some(
        serde_json::from_value(json!({"conditions": [
            {"type": CONDITION, "status": "False", "reason": "Converting"},
        ]}))
        .unwrap(),
    );
    assert_eq!(failed_by_condition(&n), None);
}

#[test]
fn only_jobs_whose_node_is_gone_are_orphans() {
    let mut short = job_with(json!([]));
    short.metadata.labels = Some(BTreeMap::from([(
        CONVERSION_NODE.to_owned(),
        "edge-a1".to_owned(),
    )]));
    let mut long = job_with(json!([]));
    let long_name = "a-node-name-too-long-for-a-label-value-".repeat(3);
    long.metadata.labels = Some(BTreeMap::from([(
        CONVERSION_NODE.to_owned(),
        node_label(&long_name),
    )]));
    long.metadata.annotations = Some(BTreeMap::from([(
        CONVERSION_NODE_NAME.to_owned(),
        long_name.clone(),
    )]));
    let unlabelled = job_with(json!([]));
    let jobs = vec![Arc::new(short), Arc::new(long), Arc::new(unlabelled)];

    let uid = |exists: bool| exists.then(|| "uid-1".to_owned());
    assert!(orphaned(&jobs, |_| uid(true)).is_empty());
    let gone = orphaned(&jobs, |n| uid(n != "edge-a1"));
    assert_eq!(gone.len(), 1);
    assert_eq!(job_node(gone[0]), Some("edge-a1"));
    // A long name is looked up in full, not by its hashed label.
    let gone = orphaned(&jobs, |n| uid(n != long_name));
    assert_eq!(gone.len(), 1);
    assert_eq!(job_node(gone[0]), Some(long_name.as_str()));
    // A Job naming no node is not ours to judge.
    assert_eq!(orphaned(&jobs, |_| None).len(), 2);
}

#[test]
fn the_job_of_an_earlier_node_of_the_same_name_is_an_orphan() {
    let earlier = Arc::new(
        job(
            "edge-a1",
            "uid-old",
            Some("pool-a"),
            "busybox:1",
            Duration::from_secs(60),
        )
        .unwrap(),
    );
    let jobs = vec![earlier];
    assert!(orphaned(&jobs, |_| Some("uid-old".to_owned())).is_empty());
    let gone = orphaned(&jobs, |_| Some("uid-new".to_owned()));
    assert_eq!(gone.len(), 1, "the Node was deleted and made again");
    // A Job from before UIDs were recorded stays its node's.
    let mut old_style = (*jobs[0]).clone();
    old_style
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .remove(CONVERSION_NODE_UID);
    assert!(made_for(&old_style, "uid-new"));
}
