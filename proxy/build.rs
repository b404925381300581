//! Link the sidecar's binary with packed relative relocations (DT_RELR) in release builds.
//!
//! A position-independent binary carries one 24-byte `.rela.dyn` entry per pointer to patch at
//! load time; the loader reads them all, so the whole table (~530 KB for the proxy) stays in
//! every sidecar's RSS. DT_RELR encodes the same relocations as bitmaps (a few KB) and keeps
//! ASLR. It needs GNU ld >= 2.38 or lld >= 15 to link and glibc >= 2.36 to run (Debian 12 has
//! both); an older linker ignores the flag with a warning.
fn main() {
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|env| env == "gnu");
    if release && linux_gnu {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
