use super::*;

fn platform_admin(components: &[&str]) -> PlatformAdmin {
    serde_json::from_value(json!({
        "apiVersion": "iot.openyurt.io/v1beta1", "kind": "PlatformAdmin",
        "metadata": {"name": "edgex-sample", "namespace": "default", "uid": "u-1"},
        "spec": {
            "version": "minnesota",
            "platform": "edgex",
            "nodepools": ["hangzhou", "beijing"],
            "components": components.iter().map(|c| json!({"name": c})).collect::<Vec<_>>(),
        },
    }))
    .expect("a PlatformAdmin")
}

#[test]
fn the_agents_run_once_per_pool_told_their_pool_owned_by_the_platform_admin() {
    let pa = platform_admin(&["edgex-device-virtual"]);
    let set = agent_app_set(&pa, "registry.local/yurt:v1");
    let decoded: YurtAppSet = serde_json::from_value(set.clone()).expect("a YurtAppSet");
    assert_eq!(decoded.name_any(), "edgex-sample-yurt-iot-dock");
    assert_eq!(
        decoded.spec.pools,
        Some(vec!["hangzhou".to_owned(), "beijing".to_owned()])
    );
    let owner = &set["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "PlatformAdmin");
    assert_eq!(owner["controller"], true);
    let deployment = &set["spec"]["workload"]["workloadTemplate"]["deploymentTemplate"];
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "edgex-sample-yurt-iot-dock");
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "registry.local/yurt:v1");
    assert_eq!(
        container["command"],
        json!(["/usr/local/bin/yurt", "iot", "agent"])
    );
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--namespace=default"));
    assert!(args.contains(&"--virtual-devices"));
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(
        pod["volumes"][0]["hostPath"]["path"],
        "/var/lib/yurt-iot/default/edgex-sample"
    );
    let tweak = &set["spec"]["workload"]["workloadTweaks"][0];
    assert_eq!(tweak["tweaks"]["replicas"], 1);
    assert_eq!(
        tweak["tweaks"]["patches"][0]["value"],
        "--nodepool={{nodepool-name}}"
    );
    // Without the virtual component, no virtual devices.
    let plain = agent_app_set(&platform_admin(&[]), "i");
    let args = plain.pointer(
        "/spec/workload/workloadTemplate/deploymentTemplate/spec/template/spec/containers/0/args",
    );
    assert!(
        !args
            .expect("args")
            .to_string()
            .contains("--virtual-devices")
    );
}

#[test]
fn components_map_onto_the_agent_and_others_are_named() {
    let (virtual_devices, unsupported) = components(&platform_admin(&[
        "yurt-iot-dock",
        "edgex-device-virtual",
        "edgex-kuiper",
        "edgex-ui-go",
    ]));
    assert!(virtual_devices);
    assert_eq!(unsupported, vec!["edgex-kuiper", "edgex-ui-go"]);
    let pa = platform_admin(&["edgex-kuiper"]);
    let s = status(&pa, None);
    assert_eq!(s["ready"], false);
    assert_eq!(s["initialized"], false);
    assert_eq!(s["conditions"][1]["type"], "ComponentsSupported");
    assert_eq!(s["conditions"][1]["status"], "False");
    assert_eq!(s["conditions"][1]["reason"], "UnsupportedComponents");
    assert!(
        s["conditions"][1]["message"]
            .as_str()
            .is_some_and(|m| m.contains("edgex-kuiper")),
        "{s}"
    );
}

#[test]
fn ready_when_every_pool_runs_its_agent() {
    let pa = platform_admin(&["edgex-device-virtual"]);
    let set = |total: i64, ready: i64| -> YurtAppSet {
        let mut s: YurtAppSet =
            serde_json::from_value(agent_app_set(&pa, "i")).expect("a YurtAppSet");
        s.status = serde_json::from_value(
            json!({"currentRevision": "r1", "totalWorkloads": total, "readyWorkloads": ready}),
        )
        .expect("a status");
        s
    };
    let half = status(&pa, Some(&set(2, 1)));
    assert_eq!(half["ready"], false);
    assert_eq!(half["readyComponentNum"], 0);
    assert_eq!(half["unreadyComponentNum"], 2);
    assert_eq!(
        half["conditions"][0]["message"],
        "the device agent is ready in 1 of 2 pool(s)"
    );
    let all = status(&pa, Some(&set(2, 2)));
    assert_eq!(all["ready"], true);
    assert_eq!(all["readyComponentNum"], 2);
    assert_eq!(all["unreadyComponentNum"], 0);
    assert_eq!(all["conditions"][0]["status"], "True");
    assert_eq!(all["conditions"][1]["status"], "True");
}
