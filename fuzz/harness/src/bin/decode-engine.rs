//! Prints an `engine` input as its header and ops (for reading findings):
//!
//!     cargo run --manifest-path fuzz/Cargo.toml -p nws-fuzz-harness --bin decode-engine -- FILE

fn main() {
    for file in std::env::args().skip(1) {
        let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
        let input = nws_fuzz_harness::EngineInput::decode(&data);
        println!(
            "{file}: flags {:#010b}, peer_len {}",
            input.flags, input.peer_len
        );
        for op in &input.ops {
            println!("  {op:?}");
        }
    }
}
