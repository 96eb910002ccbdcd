fn main() {
    // Rustler has no unload hook: the Tokio runtime's threads keep running code
    // from this library, so the library must never be unmapped.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    }
}
