//! Link options for the hub-only binary.

fn main() {
    // Relative relocations packed (DT_RELR, glibc 2.36+, GNU ld 2.38+ / lld): a
    // position-independent binary's table of pointers to patch at start shrinks from
    // ~280 KB (one 24-byte entry per pointer, all read, so all resident) to a few KB,
    // keeping ASLR. Only for `yurt-hub`, the binary built for a small footprint.
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target_env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if target_os == "linux" && target_env == "gnu" {
        println!("cargo:rustc-link-arg-bin=yurt-hub=-Wl,-z,pack-relative-relocs");
    }
}
