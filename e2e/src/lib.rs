//! End-to-end scenarios live in `tests/`: `shared_fleet.rs` runs on the shared fleet,
//! `fault_fleets.rs` on fleets of their own (link cuts, reboots, teardown, NAT), and
//! `wan_soak.rs` holds a slow, lossy link (the testkit's fault proxy) under an edge node's
//! hub for ten minutes.
