//! Runs inputs through a target on stable, to see a finding's panic message
//! and backtrace without the fuzzer:
//!
//!     cargo run --manifest-path fuzz/Cargo.toml -p nws-fuzz-harness --bin replay -- TARGET FILE...

fn main() {
    let mut args = std::env::args().skip(1);
    let target = args.next().expect("usage: replay TARGET FILE...");
    for file in args {
        let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
        eprintln!("{target} {file} ({} bytes)", data.len());
        assert!(
            nws_fuzz_harness::run(&target, &data),
            "no target `{target}`"
        );
        eprintln!("  passes");
    }
}
