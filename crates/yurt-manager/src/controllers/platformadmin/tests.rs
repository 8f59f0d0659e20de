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
    // The template's account is never made: only a pool's tweak gives a runnable pod.
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
    // Each pool's Deployment, as the YurtAppSet controller renders it, runs under that
    // pool's account and is told its pool.
    for pool in ["hangzhou", "beijing"] {
        let (_, workload) = crate::controllers::yurtappset::desired_workload(
            &decoded,
            "apps.openyurt.io/pool-name",
            pool,
            &Default::default(),
            "r1",
        )
        .expect("the tweaks apply");
        let pod = &workload["spec"]["template"]["spec"];
        assert_eq!(
            pod["serviceAccountName"],
            format!("edgex-sample-yurt-iot-dock-{pool}")
        );
        assert_eq!(
            pod["serviceAccountName"].as_str(),
            Some(agent_account(&pa, pool).as_str())
        );
        assert!(
            pod["containers"][0]["args"]
                .as_array()
                .expect("args")
                .contains(&json!(format!("--nodepool={pool}"))),
            "{pod}"
        );
    }
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

#[test]
fn each_pools_agent_has_its_own_account_labelled_with_its_pool() {
    let pa = platform_admin(&["edgex-device-virtual"]);
    let objects = agent_accounts(&pa);
    let named = |kind: AccountObject| -> Vec<String> {
        objects
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, o)| {
                o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(
        named(AccountObject::ServiceAccount),
        [
            "edgex-sample-yurt-iot-dock-hangzhou",
            "edgex-sample-yurt-iot-dock-beijing"
        ]
    );
    assert_eq!(
        named(AccountObject::RoleBinding),
        [
            "edgex-sample-yurt-iot-dock-hangzhou",
            "edgex-sample-yurt-iot-dock-hangzhou-virtual",
            "edgex-sample-yurt-iot-dock-beijing",
            "edgex-sample-yurt-iot-dock-beijing-virtual",
        ]
    );
    for (kind, object) in &objects {
        let labels = &object["metadata"]["labels"];
        assert_eq!(labels[PLATFORM_ADMIN_LABEL], "edgex-sample");
        let pool = labels[NODE_POOL].as_str().expect("a pool label");
        assert!(
            object["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(&format!("edgex-sample-yurt-iot-dock-{pool}"))),
            "{object}"
        );
        assert_eq!(object["metadata"]["ownerReferences"][0]["uid"], "u-1");
        if *kind == AccountObject::RoleBinding {
            // A binding names its own pool's account only.
            assert_eq!(
                object["subjects"],
                json!([{"kind": "ServiceAccount", "namespace": "default",
                        "name": format!("edgex-sample-yurt-iot-dock-{pool}")}])
            );
            let role = object["roleRef"]["name"].as_str().unwrap_or_default();
            assert!(role == AGENT_ROLE || role == VIRTUAL_DEVICES_ROLE, "{role}");
        }
    }
    // The account comes before its bindings.
    assert_eq!(objects[0].0, AccountObject::ServiceAccount);
    // Without the virtual component, no binding to the virtual devices' role.
    let plain = agent_accounts(&platform_admin(&[]));
    assert!(
        plain
            .iter()
            .all(|(_, o)| o["roleRef"]["name"] != VIRTUAL_DEVICES_ROLE)
    );
    assert_eq!(plain.len(), 4);
}
