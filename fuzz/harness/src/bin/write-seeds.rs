//! Writes the seed corpus: `fuzz/corpus/<target>/seed-*` (valid inputs
//! for every target; libFuzzer mutates from there).
//!
//!     cargo run --manifest-path fuzz/Cargo.toml -p nws-fuzz-harness --bin write-seeds

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    for (target, name, bytes) in nws_fuzz_harness::seeds::all() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("create corpus dir");
        std::fs::write(dir.join(&name), &bytes).expect("write seed");
        println!("{target}/{name} ({} bytes)", bytes.len());
    }
    let fixed = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../regressions");
    for (target, name, bytes) in nws_fuzz_harness::seeds::fixed_findings() {
        let dir = fixed.join(target);
        std::fs::create_dir_all(&dir).expect("create regressions dir");
        std::fs::write(dir.join(&name), &bytes).expect("write finding");
        println!("regressions/{target}/{name} ({} bytes)", bytes.len());
    }
}
