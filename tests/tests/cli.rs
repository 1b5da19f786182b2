//! The `nws` command's one-shot subcommands: keys and names.

use std::process::Command;

use nws_tests::process::nws_bin;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(nws_bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn keygen_writes_a_private_file_and_prints_only_the_npub() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    let (code, out, err) = run(&["keygen", "--out", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let secret = std::fs::read_to_string(&path).unwrap().trim().to_string();
    assert_eq!(secret.len(), 64);
    assert!(out.trim().starts_with("npub1"), "{out}");
    assert!(!out.contains(&secret) && !err.contains(&secret));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // Refuses to overwrite.
    let (code, _, err) = run(&["keygen", "--out", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot create key file"), "{err}");
    // The domain of that key decodes back to its npub.
    let (code, domain, err) = run(&[
        "domain",
        "encode",
        "--key-file",
        path.to_str().unwrap(),
        "--relay",
        "ws://127.0.0.1:7777",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, decoded, _) = run(&["domain", "decode", domain.trim()]);
    assert_eq!(code, 0);
    assert!(decoded.contains(out.trim()), "{decoded}");
    assert!(decoded.contains("relay: ws://127.0.0.1:7777"), "{decoded}");
}

#[test]
fn domain_commands_match_the_draft_test_vector() {
    let name =
        "etpjkbpf60n30bhg5oo3kdpn6srg.7rqkr7rul8t6vbtekq0b3k274i696g47eo1765t9add20llitt9g.nostr";
    let (code, out, err) = run(&["domain", "decode", name]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("pubkey: 3ef54d9f7eaa3a6fafaea680b1d047248c93408776027317a9535a2056b2ef53")
    );
    assert!(out.contains("relay: ws://0.0.0.0:7777"), "{out}");
    let (code, out, _) = run(&[
        "domain",
        "encode",
        "--pubkey",
        "3ef54d9f7eaa3a6fafaea680b1d047248c93408776027317a9535a2056b2ef53",
        "--relay",
        "ws://0.0.0.0:7777",
    ]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), name);
    let (code, _, err) = run(&["domain", "decode", "zz.nostr"]);
    assert_ne!(code, 0);
    assert!(err.contains("public key label"), "{err}");
}

#[test]
fn exit_never_prints_its_secret_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    run(&["keygen", "--out", path.to_str().unwrap()]);
    let secret = std::fs::read_to_string(&path).unwrap().trim().to_string();
    // No relay is reachable: the exit fails, and says why without the key.
    let (code, out, err) = Command::new(nws_bin())
        .args([
            "exit",
            "--relay",
            "ws://127.0.0.1:9",
            "--key-file",
            path.to_str().unwrap(),
            "--backend",
            "127.0.0.1:9",
        ])
        .env("RUST_LOG", "trace")
        .output()
        .map(|o| {
            (
                o.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("no relay reachable"), "{err}");
    assert!(!out.contains(&secret) && !err.contains(&secret));
}
