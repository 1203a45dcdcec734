//! Golden tests of the compiled state: each cluster under `tests/golden/*.yaml` is resolved for
//! every node and rendered as text; the text must equal `tests/golden/<cluster>.txt`. A mismatch
//! prints a line diff. `UPDATE_GOLDEN=1 cargo test --test golden` rewrites the expected files
//! (review the diff before committing them).

use std::{fmt::Write as _, fs, path::Path};

use policy_core::{
    explain::Cluster,
    manifest::load,
    policy::{
        resolve::resolve,
        state::{Delta, NodeState},
    },
};

fn golden_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden"))
}

fn render_cluster(cluster: &Cluster) -> String {
    let mut text = String::new();
    for (node, state) in &cluster.states {
        let _ = writeln!(text, "== {node} ==");
        text.push_str(&state.render());
    }
    text
}

fn render_delta(delta: &Delta) -> String {
    let mut text = String::new();
    for (key, value) in &delta.policy_upserts {
        let _ = writeln!(text, "+ policy {key:?} -> rule {}", value.rule_id);
    }
    for (prefix, class) in &delta.peer_bridges {
        let _ = writeln!(text, "~ peer {prefix} -> bridge {class}");
    }
    for endpoint in &delta.endpoint_upserts {
        let _ = writeln!(text, "+ endpoint {} {:?}", endpoint.pod, endpoint.info);
    }
    for (prefix, class) in &delta.peer_upserts {
        let _ = writeln!(text, "+ peer {prefix} -> {class}");
    }
    for prefix in &delta.peer_removals {
        let _ = writeln!(text, "- peer {prefix}");
    }
    for key in &delta.policy_removals {
        let _ = writeln!(text, "- policy {key:?}");
    }
    for pod in &delta.endpoint_removals {
        let _ = writeln!(text, "- endpoint {pod}");
    }
    text
}

/// A line diff (longest common subsequence), `-` expected, `+` actual.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            let _ = writeln!(out, "+ {}", b[j]);
            j += 1;
        } else {
            let _ = writeln!(out, "- {}", a[i]);
            i += 1;
        }
    }
    out
}

fn check(name: &str, actual: &str) {
    let path = golden_dir().join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::write(&path, actual).unwrap();
        return;
    }
    let expected = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{name}: compiled state differs from {}:\n{}",
        path.display(),
        diff(&expected, actual)
    );
}

fn compile(name: &str) -> Cluster {
    let loaded = load(&[golden_dir().join(format!("{name}.yaml"))]);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    Cluster::compile(loaded.snapshot).expect("compiles")
}

#[test]
fn shop() {
    check("shop", &render_cluster(&compile("shop")));
}

#[test]
fn edge() {
    check("edge", &render_cluster(&compile("edge")));
}

#[test]
fn tutorial() {
    check("tutorial", &render_cluster(&compile("tutorial")));
}

#[test]
fn shop_delta_when_web_2_becomes_an_api_pod() {
    let cluster = compile("shop");
    let before = &cluster.states["node-1"];
    let mut snapshot = cluster.snapshot.clone();
    let pod = snapshot
        .pods
        .iter_mut()
        .find(|p| p.name == "web-2")
        .unwrap();
    pod.labels.insert("tier".to_owned(), "api".to_owned());
    let after = resolve(&snapshot, "node-1", before).unwrap();
    check(
        "shop-relabel-delta",
        &render_delta(&Delta::between(before, &after)),
    );
    // Resolving the same snapshot again changes nothing.
    let again = resolve(&snapshot, "node-1", &after).unwrap();
    assert!(Delta::between(&after, &again).is_empty());
    assert_ne!(after, NodeState::default());
}

#[test]
fn diff_marks_changed_lines() {
    assert_eq!(diff("a\nb\nc\n", "a\nx\nc\n"), "+ x\n- b\n");
    assert_eq!(diff("a\n", "a\n"), "");
}
