//! `policy-agent explain` as CI runs it: the real binary, its exit code, what it prints. Input it
//! did not fully understand never passes: every problem is printed with its file, object and
//! field, the answer for the rest still follows, and the exit code is not 0.

use std::{fs, os::unix::fs::symlink, path::PathBuf, process::Command};

/// A directory of manifests that is removed when the test ends.
struct ManifestDir(PathBuf);

impl ManifestDir {
    fn new(name: &str, files: &[(&str, &str)]) -> ManifestDir {
        let dir = std::env::temp_dir().join(format!("explain-cli-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        for (file, text) in files {
            fs::write(dir.join(file), text).unwrap();
        }
        ManifestDir(dir)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for ManifestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// What one run gave: exit code, stdout, stderr.
struct Run {
    code: Option<i32>,
    out: String,
    err: String,
}

fn explain(args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_policy-agent"))
        .arg("explain")
        .args(args)
        .output()
        .expect("runs policy-agent");
    Run {
        code: output.status.code(),
        out: String::from_utf8(output.stdout).unwrap(),
        err: String::from_utf8(output.stderr).unwrap(),
    }
}

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
"#;

/// The policy that isolates shop/db, allowing only `from` (a list of peers).
fn db_policy(name: &str, ingress: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  podSelector: {{matchLabels: {{app: db}}}}\n{ingress}"
    )
}

const PAIR: [&str; 4] = ["--from", "shop/web", "--to", "shop/db"];

#[test]
fn understood_input_exits_zero_and_prints_no_notes() {
    let dir = ManifestDir::new(
        "clean",
        &[
            ("cluster.yaml", CLUSTER),
            (
                "policy.yaml",
                &db_policy(
                    "db",
                    "  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.244.0.0/16]}}]}]\n",
                ),
            ),
        ],
    );
    let run = explain(&[&["-f", dir.path()][..], &PAIR].concat());
    assert_eq!(run.code, Some(0), "{}", run.err);
    assert_eq!(run.err, "");
    assert!(
        run.out.starts_with("shop/web -> shop/db TCP/80: DENIED\n"),
        "{}",
        run.out
    );
}

#[test]
fn a_rejected_policy_fails_the_run_and_still_isolates_its_pods() {
    // The only isolating policy has a bad CIDR: as in the agent, shop/db stays isolated with
    // none of the policy's rules, and the run does not pass.
    let dir = ManifestDir::new(
        "rejected",
        &[
            ("cluster.yaml", CLUSTER),
            (
                "policy.yaml",
                &db_policy(
                    "db",
                    "  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]\n",
                ),
            ),
        ],
    );
    let run = explain(&[&["-f", dir.path()][..], &PAIR].concat());
    assert_eq!(run.code, Some(1));
    assert!(
        run.out.starts_with(
            "shop/web -> shop/db TCP/80: DENIED\n\
             \x20 shop/web egress (to 10.244.1.2): allowed, not isolated (no NetworkPolicy selects it for egress)\n\
             \x20 shop/db ingress (from 10.244.2.2): isolated by shop/db; denied: no rule allows it\n"
        ),
        "{}",
        run.out
    );
    let file = dir.0.join("policy.yaml");
    assert_eq!(
        run.err,
        format!(
            "error: {}: NetworkPolicy shop/db: spec.ingress[0].from[0].ipBlock.cidr: \
             \"10.0.0.0/33\" has an invalid prefix length (0 to 32 for IPv4, 0 to 128 for IPv6)\n\
             error: the manifests have 1 problem, listed before the answer; as the agent does, the \
             answer holds a rejected NetworkPolicy as isolation of the pods it selects with none of \
             its rules, and leaves out other objects that could not be loaded\n",
            file.display()
        )
    );
    // The JSON answer is still whole JSON on stdout.
    let run = explain(&["-f", dir.path(), "-o", "json"]);
    assert_eq!(run.code, Some(1));
    let json: serde_json::Value = serde_json::from_str(&run.out).expect("JSON answer");
    assert_eq!(json["allowed"]["shop/web"]["shop/db"], false);
    assert_eq!(json["allowed"]["shop/db"]["shop/web"], true);
}

#[test]
fn rejected_policies_isolate_what_they_select_in_their_directions() {
    // (case, policy, web -> db allowed, db -> web allowed)
    let cases: [(&str, String, bool, bool); 5] = [
        (
            "leading-zero-cidr",
            db_policy(
                "db",
                "  ingress: [{from: [{ipBlock: {cidr: 010.0.0.0/8}}]}]\n",
            ),
            false,
            true,
        ),
        (
            "bad-port-egress",
            db_policy("db", "  egress: [{ports: [{port: 0}]}]\n"),
            false,
            false,
        ),
        (
            "egress-only",
            db_policy(
                "db",
                "  policyTypes: [Egress]\n  egress: [{ports: [{protocol: ICMP}]}]\n",
            ),
            true,
            false,
        ),
        (
            // The podSelector cannot be read: every pod of the namespace is isolated.
            "bad-selector",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {name: db, namespace: shop}\n\
             spec:\n  podSelector: {matchExpressions: [{key: app, operator: Near}]}\n\
             \x20 ingress: [{}]\n"
                .to_owned(),
            false,
            false,
        ),
        (
            // The policyTypes cannot be read: both directions.
            "bad-types",
            db_policy("db", "  policyTypes: [Ingres]\n  ingress: [{}]\n"),
            false,
            false,
        ),
    ];
    for (name, policy, web_to_db, db_to_web) in cases {
        let dir = ManifestDir::new(name, &[("cluster.yaml", CLUSTER), ("bad.yaml", &policy)]);
        let run = explain(&["-f", dir.path(), "-o", "json"]);
        assert_eq!(run.code, Some(1), "{name}: {}", run.err);
        assert!(
            run.err.contains("NetworkPolicy shop/db: spec."),
            "{name}: {}",
            run.err
        );
        let json: serde_json::Value = serde_json::from_str(&run.out).expect("JSON answer");
        assert_eq!(
            (
                json["allowed"]["shop/web"]["shop/db"].as_bool(),
                json["allowed"]["shop/db"]["shop/web"].as_bool()
            ),
            (Some(web_to_db), Some(db_to_web)),
            "{name}"
        );
    }
}

#[test]
fn each_kind_of_bad_input_is_an_error_naming_file_object_and_field() {
    let cases: [(&str, String, &str); 9] = [
        (
            "ingres",
            db_policy("db", "  ingres: [{from: [{podSelector: {}}]}]\n"),
            "NetworkPolicy shop/db: unknown field spec.ingres: the NetworkPolicy API does not \
             define it",
        ),
        (
            "excpt",
            db_policy(
                "db",
                "  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, excpt: [10.244.0.0/16]}}]}]\n",
            ),
            "NetworkPolicy shop/db: unknown field spec.ingress[0].from[0].ipBlock.excpt: the \
             NetworkPolicy API does not define it",
        ),
        (
            "no-spec",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db, namespace: shop}\n"
                .to_owned(),
            "NetworkPolicy shop/db: spec: is required",
        ),
        (
            "label-type",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: api, namespace: shop, labels: {tier: 5}}\n"
                .to_owned(),
            "Pod shop/api: metadata.labels.tier: does not fit the Pod schema: invalid type: \
             integer `5`, expected a string",
        ),
        (
            "host-bits",
            db_policy("db", "  ingress: [{from: [{ipBlock: {cidr: 10.244.1.7/8}}]}]\n"),
            "NetworkPolicy shop/db: spec.ingress[0].from[0].ipBlock.cidr: \"10.244.1.7/8\" has \
             host bits set: write the network 10.0.0.0/8 or the address 10.244.1.7/32",
        ),
        (
            "port-type",
            db_policy("db", "  ingress: [{ports: [{port: [80]}]}]\n"),
            "NetworkPolicy shop/db: spec.ingress[0].ports[0].port: does not fit the NetworkPolicy \
             schema",
        ),
        (
            "duplicate-key",
            db_policy("db", "  ingress: []\n  ingress: [{}]\n"),
            "document 1 (line 1): not valid YAML: spec: duplicate entry with key \"ingress\" at line 5 \
             column 3",
        ),
        (
            "service-field",
            "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: shop}\nspec: {selectr: {app: db}}\n"
                .to_owned(),
            "Service shop/db: unknown field spec.selectr: the Service API does not define it",
        ),
        (
            "api-version",
            db_policy("db", "").replace("networking.k8s.io/v1", "extensions/v1beta1"),
            "NetworkPolicy shop/db: apiVersion \"extensions/v1beta1\" is not read; this kind is \
             read as networking.k8s.io/v1",
        ),
    ];
    for (name, text, expected) in cases {
        let dir = ManifestDir::new(name, &[("cluster.yaml", CLUSTER), ("bad.yaml", &text)]);
        let run = explain(&[&["-f", dir.path()][..], &PAIR].concat());
        assert_eq!(run.code, Some(1), "{name}: {}", run.err);
        let first = run.err.lines().next().unwrap_or_default();
        let prefix = format!("error: {}: {expected}", dir.0.join("bad.yaml").display());
        assert!(first.starts_with(&prefix), "{name}:\n{first}\n{prefix}");
        assert!(
            run.err.contains("the manifests have 1 problem"),
            "{name}: {}",
            run.err
        );
        assert!(
            run.out.starts_with("shop/web -> shop/db"),
            "{name}: {}",
            run.out
        );
    }
}

#[test]
fn a_second_definition_fails_the_run_naming_both_files() {
    let dir = ManifestDir::new(
        "duplicate",
        &[
            ("a.yaml", CLUSTER),
            (
                "b.yaml",
                "apiVersion: v1\nkind: Pod\nmetadata: {name: db, namespace: shop, labels: {app: other}}\n",
            ),
        ],
    );
    let run = explain(&["-f", dir.path(), "-o", "json"]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.err.starts_with(&format!(
            "error: {}: Pod shop/db: already defined in {}; this second definition is rejected\n",
            dir.0.join("b.yaml").display(),
            dir.0.join("a.yaml").display()
        )),
        "{}",
        run.err
    );
    let json: serde_json::Value = serde_json::from_str(&run.out).unwrap();
    assert_eq!(json["pods"], serde_json::json!(["shop/db", "shop/web"]));
}

#[test]
fn a_path_that_is_not_there_is_an_error_without_an_answer() {
    let dir = ManifestDir::new("missing", &[("cluster.yaml", CLUSTER)]);
    let missing = dir.0.join("nope.yaml");
    let run = explain(&["-f", dir.path(), "-f", missing.to_str().unwrap()]);
    assert_eq!(run.code, Some(1));
    assert_eq!(run.out, "");
    assert_eq!(
        run.err,
        format!(
            "error: {}: cannot read: No such file or directory (os error 2)\n",
            missing.display()
        )
    );
}

#[test]
fn port_zero_is_refused() {
    let dir = ManifestDir::new("port", &[("cluster.yaml", CLUSTER)]);
    let run = explain(&["-f", dir.path(), "--port", "0"]);
    assert_eq!(run.code, Some(2));
    assert_eq!(run.out, "");
    assert!(
        run.err
            .contains("invalid value '0' for '--port <PORT>': 0 is not in 1..=65535"),
        "{}",
        run.err
    );
}

#[test]
fn symbolic_link_loops_read_each_file_once() {
    let dir = ManifestDir::new("loops", &[("cluster.yaml", CLUSTER)]);
    fs::create_dir(dir.0.join("sub")).unwrap();
    symlink(".", dir.0.join("self")).unwrap();
    symlink("..", dir.0.join("sub/up")).unwrap();
    let run = explain(&["-f", dir.path(), "-o", "json"]);
    assert_eq!(run.code, Some(0), "{}", run.err);
    assert_eq!(run.err, "");
    let json: serde_json::Value = serde_json::from_str(&run.out).unwrap();
    assert_eq!(json["pods"], serde_json::json!(["shop/db", "shop/web"]));
}

#[test]
fn names_are_printed_with_control_characters_escaped() {
    let pod =
        "apiVersion: v1\nkind: Pod\nmetadata: {name: \"x\\e[2J\", namespace: \"shop\\u202e\"}\n";
    let bad_key =
        "apiVersion: v1\nkind: Pod\nmetadata: {name: y, namespace: shop, \"\\e]0;t\\a\": 1}\n";
    let dir = ManifestDir::new("escapes", &[("pod.yaml", pod), ("bad.yaml", bad_key)]);
    let raw = |text: &str| {
        text.chars()
            .any(|c| c == '\u{1b}' || c == '\u{7}' || c == '\u{202e}')
    };

    let run = explain(&["-f", dir.path()]);
    assert_eq!(run.code, Some(1));
    assert!(
        !raw(&run.out) && !raw(&run.err),
        "{:?} {:?}",
        run.out,
        run.err
    );
    assert!(run.out.contains("shop\\u{202e}/x\\u{1b}[2J"), "{}", run.out);
    assert!(
        run.err
            .contains("unknown field metadata[\\u{1b}]0;t\\u{7}]: the Pod API"),
        "{}",
        run.err
    );

    let run = explain(&["-f", dir.path(), "-o", "json"]);
    assert!(!raw(&run.out), "{:?}", run.out);
    let json: serde_json::Value = serde_json::from_str(&run.out).unwrap();
    assert_eq!(json["pods"], serde_json::json!(["shop\u{202e}/x\u{1b}[2J"]));

    let name = "shop\u{202e}/x\u{1b}[2J";
    let run = explain(&["-f", dir.path(), "--from", name, "--to", name]);
    assert!(
        !raw(&run.out) && !raw(&run.err),
        "{:?} {:?}",
        run.out,
        run.err
    );
    assert!(
        run.out
            .starts_with("shop\\u{202e}/x\\u{1b}[2J -> shop\\u{202e}/x\\u{1b}[2J TCP/80: ALLOWED"),
        "{}",
        run.out
    );

    let run = explain(&["-f", dir.path(), "--from", "a\u{1b}[2J", "--to", name]);
    assert!(!raw(&run.err), "{:?}", run.err);
    assert!(
        run.err.ends_with(
            "error: pod a\\u{1b}[2J is not among the loaded pods that take part in policy\n"
        ),
        "{}",
        run.err
    );
}
