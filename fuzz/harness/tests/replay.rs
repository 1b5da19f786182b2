//! Replays every committed input through its target on stable Rust, no
//! fuzzer needed: the seed corpus (`fuzz/corpus/<target>/`) and every input
//! that once broke something (`fuzz/regressions/<target>/`, one file per
//! finding, named after it).

use std::path::{Path, PathBuf};

use nws_fuzz_harness::{run, seeds, TARGETS};

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn replay_dir(dir: &Path, target: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    for path in files {
        let data = std::fs::read(&path).expect("read input");
        let outcome = std::panic::catch_unwind(|| run(target, &data));
        assert!(
            matches!(outcome, Ok(true)),
            "{} fails its target `{target}`",
            path.display()
        );
        n += 1;
    }
    n
}

#[test]
fn seed_corpus_and_fixed_regressions_pass() {
    let mut total = 0;
    for target in TARGETS {
        let seeds = replay_dir(&fuzz_dir().join("corpus").join(target), target);
        assert!(seeds > 0, "no committed corpus for `{target}`");
        total += seeds + replay_dir(&fuzz_dir().join("regressions").join(target), target);
    }
    eprintln!("replayed {total} inputs");
}

#[test]
fn committed_seeds_are_current() {
    for (target, name, bytes) in seeds::all() {
        let path = fuzz_dir().join("corpus").join(target).join(&name);
        let committed = std::fs::read(&path).unwrap_or_default();
        // Sealed seeds carry a random nonce: only their presence is checked.
        if target != "nip44_open" {
            assert_eq!(
                committed,
                bytes,
                "{} is stale: run write-seeds",
                path.display()
            );
        } else {
            assert!(
                !committed.is_empty(),
                "{} missing: run write-seeds",
                path.display()
            );
        }
    }
}
