//! `cargo xtask kind-e2e` on a machine without docker, kind and kubectl: it fails at once and
//! says what is missing and what to do instead, before touching anything.

use std::process::Command;

#[test]
fn without_the_tools_kind_e2e_fails_fast_naming_them() {
    let empty = std::env::temp_dir().join(format!("xtask-kind-e2e-path-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("kind-e2e")
        .env("PATH", &empty)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&empty).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("needs docker, kind and kubectl on PATH; missing: docker, kind, kubectl."),
        "{stderr}"
    );
    assert!(stderr.contains("sudo -E cargo xtask e2e"), "{stderr}");
}
