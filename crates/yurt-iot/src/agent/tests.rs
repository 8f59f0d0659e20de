use serde_json::json;

use super::*;

fn device(name: &str, pool: &str, generation: i64) -> Device {
    serde_json::from_value(json!({
        "apiVersion": "iot.openyurt.io/v1alpha1", "kind": "Device",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                     "generation": generation, "resourceVersion": generation.to_string()},
        "spec": {"serviceName": "s", "profileName": "no-such-profile", "notify": false,
                 "nodePool": pool, "managed": true},
    }))
    .expect("a device")
}

/// An agent whose API client answers nothing (its status writers retry quietly).
fn agent() -> Agent {
    agent_with(16, Arc::new(InFlight::default()))
}

/// Requests in flight at the fake API server, and the most at once.
#[derive(Default)]
struct InFlight {
    now: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

/// An agent allowing `writes` status writes at once, whose API client holds each
/// request 50 ms (counted in `in_flight`) and then fails it.
fn agent_with(writes: usize, in_flight: Arc<InFlight>) -> Agent {
    use std::sync::atomic::Ordering::SeqCst;
    let service = tower::service_fn(move |_req: http::Request<kube::client::Body>| {
        let in_flight = Arc::clone(&in_flight);
        async move {
            let now = in_flight.now.fetch_add(1, SeqCst) + 1;
            in_flight.most.fetch_max(now, SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            in_flight.now.fetch_sub(1, SeqCst);
            Err::<http::Response<kube::client::Body>, _>(std::io::Error::other(
                "no API server in this test",
            ))
        }
    });
    let config = AgentConfig {
        namespace: "default".into(),
        pool: "hz".into(),
        state_dir: std::env::temp_dir(),
        poll_interval: Duration::from_secs(5),
        heartbeat: Duration::from_secs(60),
        status_on_change: true,
        min_status_interval: Duration::from_secs(1),
        status_retry_max: Duration::from_secs(5),
        max_concurrent_status_writes: writes,
        virtual_devices: false,
    };
    Agent::new(
        kube::Client::new(service, "default"),
        config,
        Metrics::default(),
    )
    .expect("an agent")
}

/// `count` devices of the pool (`d000`...) that cannot be driven, each writer writing at
/// once.
fn add_devices(agent: &mut Agent, count: usize) {
    for d in 0..count {
        let name = format!("d{d:03}");
        agent
            .known
            .devices
            .insert(name.clone(), device(&name, "hz", 1));
    }
    agent.reconcile();
}

/// The device a status write names (`.../devices/<name>/status`).
fn device_written(req: &http::Request<kube::client::Body>) -> String {
    let path = req.uri().path().trim_end_matches("/status");
    path.rsplit('/').next().unwrap_or_default().to_owned()
}

/// An agent through `service`, beating every `heartbeat`, backing off up to 30 s, 16
/// writes at once, with `devices` devices that cannot be driven (each writes at once).
fn agent_over<S>(service: S, heartbeat: Duration, devices: usize) -> Agent
where
    S: tower::Service<
            http::Request<kube::client::Body>,
            Response = http::Response<kube::client::Body>,
        > + Send
        + Sync
        + Clone
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<tower::BoxError>,
{
    let config = AgentConfig {
        namespace: "default".into(),
        pool: "hz".into(),
        state_dir: std::env::temp_dir(),
        poll_interval: Duration::from_secs(5),
        heartbeat,
        status_on_change: true,
        min_status_interval: Duration::from_secs(1),
        status_retry_max: Duration::from_secs(30),
        max_concurrent_status_writes: 16,
        virtual_devices: false,
    };
    let mut agent = Agent::new(
        kube::Client::new(service, "default"),
        config,
        Metrics::default(),
    )
    .expect("an agent");
    add_devices(&mut agent, devices);
    agent
}

#[test]
fn a_watch_event_names_what_it_changed() {
    let mut known = BTreeMap::new();
    let mut init = None;
    assert_eq!(
        apply(&mut known, &mut init, Event::Apply(device("a", "hz", 1))),
        Changed::One("a".into())
    );
    assert_eq!(
        apply(&mut known, &mut init, Event::Delete(device("b", "hz", 1))),
        Changed::Nothing,
        "a device never known"
    );
    assert_eq!(apply(&mut known, &mut init, Event::Init), Changed::Nothing);
    assert_eq!(
        apply(
            &mut known,
            &mut init,
            Event::InitApply(device("b", "hz", 1))
        ),
        Changed::Nothing
    );
    assert!(known.contains_key("a"), "kept until the relist ends");
    assert_eq!(apply(&mut known, &mut init, Event::InitDone), Changed::All);
    assert_eq!(known.keys().collect::<Vec<_>>(), ["b"]);
    assert_eq!(
        apply(&mut known, &mut init, Event::Delete(device("b", "hz", 1))),
        Changed::One("b".into())
    );

    let one = |n: &str| Changed::One(n.to_owned());
    assert_eq!(Changed::Nothing.and(one("a")), one("a"));
    assert_eq!(one("a").and(Changed::Nothing), one("a"));
    assert_eq!(one("a").and(one("a")), one("a"));
    assert_eq!(one("a").and(one("b")), Changed::All);
    assert_eq!(Changed::All.and(Changed::Nothing), Changed::All);
}

#[tokio::test]
async fn one_devices_event_touches_that_devices_loop_only() {
    let mut agent = agent();
    for (name, pool) in [("a", "hz"), ("b", "hz"), ("c", "hz"), ("other", "bj")] {
        agent
            .known
            .devices
            .insert(name.into(), device(name, pool, 1));
    }
    agent.reconcile();
    assert_eq!(
        agent.runners.keys().collect::<Vec<_>>(),
        ["a", "b", "c"],
        "its pool's devices only"
    );
    let token = |agent: &Agent, n: &str| agent.runners[n].cancel.clone();
    let (a, b, c) = (token(&agent, "a"), token(&agent, "b"), token(&agent, "c"));

    // Its own status write coming back (same generation): the loop stays, the status
    // writer gets the newer object.
    let mut echoed = device("b", "hz", 1);
    echoed.metadata.resource_version = Some("7".into());
    agent.known.devices.insert("b".into(), echoed);
    agent.reconcile_device("b");
    assert!(!b.is_cancelled());
    assert_eq!(
        agent.runners["b"]
            .device
            .borrow()
            .metadata
            .resource_version
            .as_deref(),
        Some("7")
    );

    // A changed spec: that loop is replaced, no other.
    agent.known.devices.insert("b".into(), device("b", "hz", 2));
    agent.reconcile_device("b");
    assert!(b.is_cancelled());
    assert!(!agent.runners["b"].cancel.is_cancelled());
    assert!(!a.is_cancelled() && !c.is_cancelled());

    // Deleted, or moved to another pool: its loop stops.
    agent.known.devices.remove("c");
    agent.reconcile_device("c");
    assert!(c.is_cancelled());
    agent.known.devices.insert("a".into(), device("a", "bj", 2));
    agent.reconcile_device("a");
    assert!(a.is_cancelled());
    assert_eq!(agent.runners.keys().collect::<Vec<_>>(), ["b"]);
}

#[tokio::test]
async fn status_writes_in_flight_are_bounded_across_the_pool() {
    use std::sync::atomic::Ordering::SeqCst;
    // 100 devices that cannot be driven (no profile): each writer writes at once.
    let run = |writes: usize| async move {
        let in_flight = Arc::new(InFlight::default());
        let mut agent = agent_with(writes, Arc::clone(&in_flight));
        add_devices(&mut agent, 100);
        tokio::time::sleep(Duration::from_millis(300)).await;
        for r in agent.runners.values() {
            r.cancel.cancel();
        }
        in_flight.most.load(SeqCst)
    };
    let bounded = run(4).await;
    assert!(
        (1..=4).contains(&bounded),
        "{bounded} writes in flight at once"
    );
    // The same pool unbounded: the bound above is what held them back.
    let unbounded = run(1000).await;
    assert!(unbounded > 4, "{unbounded} writes in flight at once");
}

#[tokio::test(start_paused = true)]
async fn a_write_going_through_after_a_cut_wakes_every_writer_in_backoff() {
    use std::sync::atomic::Ordering::SeqCst;
    // The API server is out of reach until `up`; then every write goes through.
    let up = Arc::new(AtomicBool::new(false));
    let written = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let service = {
        let (up, written, attempts) =
            (Arc::clone(&up), Arc::clone(&written), Arc::clone(&attempts));
        tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let (up, written) = (Arc::clone(&up), Arc::clone(&written));
            attempts.fetch_add(1, SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if !up.load(SeqCst) {
                    return Err(std::io::Error::other("the link is cut"));
                }
                let name = device_written(&req);
                let body =
                    serde_json::to_vec(&device(&name, "hz", 1)).map_err(std::io::Error::other)?;
                if let Ok(mut w) = written.lock() {
                    w.insert(name);
                }
                Ok(http::Response::new(kube::client::Body::from(body)))
            }
        })
    };
    let agent = agent_over(service, Duration::from_secs(600), 100);
    // Long enough a cut for every writer's backoff to reach 15-30 s.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(written.lock().map(|w| w.is_empty()).unwrap_or(false));
    // Each writer has tried at least five times (waits of at most 2, 4, 8 and 16 s): a
    // writer in backoff holds no turn of the pool's writes.
    let tried = attempts.load(SeqCst);
    assert!(tried >= 500, "{tried} writes tried in 60 s by 100 writers");

    up.store(true, SeqCst);
    let back = tokio::time::Instant::now();
    let count = || written.lock().map(|w| w.len()).unwrap_or(0);
    while count() < 100 && back.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let caught_up = back.elapsed();
    for r in agent.runners.values() {
        r.cancel.cancel();
    }
    assert_eq!(count(), 100);
    // The first retry after the link is back wakes the rest: one backoff's worth of
    // waiting would be 15 s or more.
    assert!(
        caught_up < Duration::from_secs(5),
        "every device written {caught_up:?} after the link came back"
    );
}

#[tokio::test(start_paused = true)]
async fn writes_refused_by_a_server_that_is_up_wait_out_their_backoff_while_others_go_through() {
    use std::sync::atomic::Ordering::SeqCst;
    // Ten devices' writes are always answered 500; the other ninety go through, each
    // beating every 2 s (45 writes a second that each say the link is fine).
    let refused_tries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let service = {
        let refused_tries = Arc::clone(&refused_tries);
        tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let refused_tries = Arc::clone(&refused_tries);
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let name = device_written(&req);
                let (code, body) = if name.as_str() < "d010" {
                    refused_tries.fetch_add(1, SeqCst);
                    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                        "message": "overloaded", "reason": "InternalError", "code": 500});
                    (500, status.to_string().into_bytes())
                } else {
                    let device = serde_json::to_vec(&device(&name, "hz", 1))
                        .map_err(std::io::Error::other)?;
                    (200, device)
                };
                http::Response::builder()
                    .status(code)
                    .body(kube::client::Body::from(body))
                    .map_err(std::io::Error::other)
            }
        })
    };
    let agent = agent_over(service, Duration::from_secs(2), 100);
    tokio::time::sleep(Duration::from_secs(60)).await;
    for r in agent.runners.values() {
        r.cancel.cancel();
    }
    // Backing off from 2 s to 30 s, each tries about eight times in a minute (a wake by
    // a write going through counts once per backoff); woken by every write that goes
    // through, each would try dozens of times a second.
    let tries = refused_tries.load(SeqCst);
    assert!(
        (10..=200).contains(&tries),
        "{tries} tries of ten refused writers in 60 s"
    );
}
