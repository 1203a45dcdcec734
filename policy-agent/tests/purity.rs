//! The policy core stays pure: no file under `src/policy/` names kube, k8s_openapi, aya or
//! tokio in code (comments may mention them), so its semantics test without a cluster or kernel.

use std::{fs, path::Path};

const FORBIDDEN: [&str; 4] = ["kube", "k8s_openapi", "aya", "tokio"];

/// Every identifier of `source` outside `//` comments, with its line number.
fn identifiers(source: &str) -> Vec<(usize, &str)> {
    source
        .lines()
        .enumerate()
        .flat_map(|(number, line)| {
            let code = line.split("//").next().unwrap_or_default();
            code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| !word.is_empty())
                .map(move |word| (number + 1, word))
        })
        .collect()
}

fn rust_files(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn policy_core_names_no_adapter_crate() {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src/policy"));
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    assert!(
        files.len() >= 5,
        "expected the policy sources in {}",
        dir.display()
    );
    let mut offences = Vec::new();
    for file in &files {
        let source = fs::read_to_string(file).unwrap();
        for (line, word) in identifiers(&source) {
            if FORBIDDEN.contains(&word) {
                offences.push(format!("{}:{line}: {word}", file.display()));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "the pure core names adapter crates:\n{}",
        offences.join("\n")
    );
}

#[test]
fn the_scan_finds_a_forbidden_name_in_code_but_not_in_comments() {
    let found: Vec<&str> = identifiers("use tokio::sync; // kube\nlet x = aya_ebpf; /// aya\n")
        .into_iter()
        .map(|(_, word)| word)
        .filter(|word| FORBIDDEN.contains(word))
        .collect();
    assert_eq!(found, ["tokio"]);
}
