//! The cache survives being killed at any moment: a writer process is SIGKILLed at a
//! random point of heavy, batched writes, a thousand times over the same database. After
//! every kill the database opens without being set aside and every object whose commit
//! the writer acknowledged is there and intact.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use yurt_hub::metrics::HubMetrics;
use yurt_hub::store::{ObjectKey, Store, StoreConfig};

const ROUNDS: usize = 1000;

/// A small xorshift generator (deterministic per run, varied by the clock).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn key(i: u64) -> ObjectKey {
    ObjectKey {
        component: "stress".into(),
        gvr: "configmaps.v1.core".into(),
        namespace: "stress".into(),
        name: format!("obj-{i:08}"),
    }
}

#[test]
fn sigkill_during_heavy_writes_never_loses_an_acknowledged_object() {
    let dir = tempfile::tempdir().unwrap();
    let writer = env!("CARGO_BIN_EXE_yurt-hub-cache-writer");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = Rng(seed);
    let mut next = 0u64;
    let mut acked_total = 0u64;
    let started = Instant::now();
    for round in 0..ROUNDS {
        let mut child = Command::new(writer)
            .arg(dir.path())
            .arg(next.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(n) = line
                    .strip_prefix("acked ")
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    let _ = tx.send(n);
                }
            }
        });
        // Kill somewhere between start-up and a few commits in.
        std::thread::sleep(Duration::from_micros(rng.next() % 30_000));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        let acked = rx.try_iter().last();

        let metrics = HubMetrics::default();
        let store = Store::open(
            &StoreConfig {
                batch_max: 64,
                ..StoreConfig::new(dir.path().to_owned())
            },
            metrics.clone(),
        )
        .unwrap();
        assert_eq!(
            metrics.cache_resets.get(),
            0,
            "round {round}: the database had to be set aside"
        );
        if let Some(acked) = acked {
            for i in next..acked {
                let obj = store.get(&key(i)).unwrap().unwrap_or_else(|| {
                    panic!("round {round}: acknowledged object {i} lost (acked {acked})")
                });
                assert_eq!(obj.info.resource_version, i.to_string());
            }
            acked_total = acked;
            next = acked;
        }
        assert_eq!(
            metrics.cache_corrupt_entries.get(),
            0,
            "round {round}: corrupt entries"
        );
        store.close();
    }
    // Everything acknowledged over all rounds is still there.
    let store = Store::open(
        &StoreConfig {
            batch_max: 64,
            ..StoreConfig::new(dir.path().to_owned())
        },
        HubMetrics::default(),
    )
    .unwrap();
    assert!(
        acked_total > 0,
        "the writer never got to commit in {ROUNDS} rounds"
    );
    for i in (0..acked_total).step_by(97) {
        assert!(store.get(&key(i)).unwrap().is_some(), "object {i} lost");
    }
    eprintln!(
        "{ROUNDS} kills, {acked_total} acknowledged objects, {:?}",
        started.elapsed()
    );
}
