//! The expectation language of the scenarios: a reachability truth table written as a few lines.
//!
//! ```text
//! deny all              # first line: every cell starts allowed (`allow all`) or denied
//! allow x/* -> x/a      # then `allow|deny FROM -> TO`; a later line overrides an earlier one
//! deny */b -> y/c
//! unserved x/d          # Service probes: no Service exposes the probed port on x/d (null)
//! ```
//!
//! FROM is the client (a row of the matrix) and TO the server (a column). A pod pattern is
//! `ns/name` (one pod), `ns/*` (the pods of a namespace), `*/name` (the pods of that name in every
//! namespace) or `*` (every pod); each pattern must match at least one pod of the cluster, so a typo
//! is an error rather than a silently empty rule. `#` starts a comment.
//!
//! The diagonal (a pod to itself) is always allowed: a pod can always reach itself, also through
//! its own Service. Only a line whose FROM and TO name the same single pod changes a diagonal
//! cell. `unserved TO` makes the whole column null, the diagonal included.

use std::fmt;

use anyhow::{Context as _, bail};
use policy_core::matrix::{Cell, Matrix};

/// A set of pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    All,
    Namespace(String),
    Name(String),
    Pod { namespace: String, name: String },
}

impl Pattern {
    fn parse(text: &str) -> anyhow::Result<Self> {
        if text == "*" {
            return Ok(Self::All);
        }
        let Some((namespace, name)) = text.split_once('/') else {
            bail!("{text:?} is not a pod pattern (`ns/name`, `ns/*`, `*/name` or `*`)");
        };
        let valid = |part: &str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        };
        match (namespace, name) {
            ("*", "*") => Ok(Self::All),
            ("*", name) if valid(name) => Ok(Self::Name(name.to_owned())),
            (namespace, "*") if valid(namespace) => Ok(Self::Namespace(namespace.to_owned())),
            (namespace, name) if valid(namespace) && valid(name) => Ok(Self::Pod {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }),
            _ => bail!("{text:?} is not a pod pattern (`ns/name`, `ns/*`, `*/name` or `*`)"),
        }
    }

    fn matches(&self, pod: &str) -> bool {
        let (namespace, name) = pod.split_once('/').unwrap_or(("", pod));
        match self {
            Self::All => true,
            Self::Namespace(wanted) => namespace == wanted,
            Self::Name(wanted) => name == wanted,
            Self::Pod {
                namespace: wanted_namespace,
                name: wanted_name,
            } => namespace == wanted_namespace && name == wanted_name,
        }
    }

    /// The pods of `pods` that match, or an error naming the pattern when none does.
    fn select<'a>(&self, pods: &'a [String]) -> anyhow::Result<Vec<&'a String>> {
        let selected: Vec<&String> = pods.iter().filter(|pod| self.matches(pod)).collect();
        if selected.is_empty() {
            bail!("{self} matches no pod of the cluster ({})", pods.join(", "));
        }
        Ok(selected)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::Namespace(namespace) => write!(f, "{namespace}/*"),
            Self::Name(name) => write!(f, "*/{name}"),
            Self::Pod { namespace, name } => write!(f, "{namespace}/{name}"),
        }
    }
}

/// One line after the first.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Rule {
    Set {
        cell: Cell,
        from: Pattern,
        to: Pattern,
    },
    Unserved(Pattern),
}

/// A parsed expectation, to be expanded over the pods of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expectation {
    start: Cell,
    /// With the 1-based line number, for messages.
    rules: Vec<(usize, Rule)>,
}

impl Expectation {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(index, line)| (index + 1, line.split('#').next().unwrap_or("").trim()))
            .filter(|(_, line)| !line.is_empty());
        let start = match lines.next() {
            Some((_, "allow all")) => Cell::Allowed,
            Some((_, "deny all")) => Cell::Denied,
            Some((number, line)) => {
                bail!(
                    "line {number}: {line:?}: an expectation starts with `allow all` or `deny all`"
                )
            }
            None => bail!("the expectation is empty: it starts with `allow all` or `deny all`"),
        };
        let rules = lines
            .map(|(number, line)| {
                parse_rule(line)
                    .with_context(|| format!("line {number}: {line:?}"))
                    .map(|rule| (number, rule))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { start, rules })
    }

    /// The expected matrix over `pods` (named `namespace/name`).
    pub fn expand(&self, pods: &[String]) -> anyhow::Result<Matrix> {
        let mut matrix = Matrix::filled(pods, self.start);
        for pod in pods {
            matrix.set(pod, pod, Cell::Allowed);
        }
        for (number, rule) in &self.rules {
            let context = || format!("line {number}");
            match rule {
                Rule::Set { cell, from, to } => {
                    let clients = from.select(pods).with_context(context)?;
                    let servers = to.select(pods).with_context(context)?;
                    let names_one_pod =
                        matches!((from, to), (Pattern::Pod { .. }, Pattern::Pod { .. }));
                    for client in &clients {
                        for server in &servers {
                            if client != server || names_one_pod {
                                matrix.set(client, server, *cell);
                            }
                        }
                    }
                }
                Rule::Unserved(to) => {
                    for server in to.select(pods).with_context(context)? {
                        for client in pods {
                            matrix.set(client, server, Cell::Unserved);
                        }
                    }
                }
            }
        }
        Ok(matrix)
    }
}

fn parse_rule(line: &str) -> anyhow::Result<Rule> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["unserved", to] => Ok(Rule::Unserved(Pattern::parse(to)?)),
        [verb @ ("allow" | "deny"), from, "->", to] => Ok(Rule::Set {
            cell: if *verb == "allow" {
                Cell::Allowed
            } else {
                Cell::Denied
            },
            from: Pattern::parse(from)?,
            to: Pattern::parse(to)?,
        }),
        _ => bail!("expected `allow FROM -> TO`, `deny FROM -> TO` or `unserved TO`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Vec<String> {
        ["x", "y"]
            .iter()
            .flat_map(|namespace| ["a", "b"].map(|name| format!("{namespace}/{name}")))
            .collect()
    }

    /// The matrix drawn as rows of `.`, `X` and `-`, one row per client in `cluster()` order.
    fn rows(matrix: &Matrix) -> Vec<String> {
        let pods = matrix.pods();
        pods.iter()
            .map(|from| {
                pods.iter()
                    .map(|to| match matrix.get(from, to) {
                        Some(Cell::Allowed) => '.',
                        Some(Cell::Denied) => 'X',
                        Some(Cell::Unserved) => '-',
                        None => '?',
                    })
                    .collect()
            })
            .collect()
    }

    fn expand(text: &str) -> Vec<String> {
        rows(
            &Expectation::parse(text)
                .unwrap()
                .expand(&cluster())
                .unwrap(),
        )
    }

    #[test]
    fn allow_all_is_all_allowed() {
        assert_eq!(expand("allow all"), ["....", "....", "....", "...."]);
    }

    #[test]
    fn deny_all_keeps_the_diagonal() {
        assert_eq!(expand("deny all"), [".XXX", "X.XX", "XX.X", "XXX."]);
    }

    #[test]
    fn a_namespace_pattern_covers_its_pods() {
        // Columns and rows: x/a, x/b, y/a, y/b.
        assert_eq!(
            expand("allow all\ndeny * -> x/*"),
            [".X..", "X...", "XX..", "XX.."]
        );
    }

    #[test]
    fn a_name_pattern_covers_every_namespace() {
        assert_eq!(
            expand("deny all\nallow */b -> *"),
            [".XXX", "....", "XX.X", "...."]
        );
    }

    #[test]
    fn later_lines_override_earlier_ones() {
        assert_eq!(
            expand("deny all\nallow * -> y/a\ndeny x/b -> y/a"),
            [".X.X", "X.XX", "XX.X", "XX.."]
        );
    }

    #[test]
    fn only_a_single_pod_line_changes_the_diagonal() {
        assert_eq!(
            expand("allow all\ndeny x/* -> x/*"),
            [".X..", "X...", "....", "...."]
        );
        let one_pod = ["x/a".to_owned()];
        let matrix = Expectation::parse("allow all\ndeny x/* -> *")
            .unwrap()
            .expand(&one_pod)
            .unwrap();
        assert_eq!(
            rows(&matrix),
            ["."],
            "a pattern that happens to match one pod"
        );
        assert_eq!(
            expand("allow all\ndeny x/a -> x/a"),
            ["X...", "....", "....", "...."]
        );
    }

    #[test]
    fn unserved_nulls_a_whole_column() {
        assert_eq!(
            expand("deny all\nallow x/* -> *\nunserved y/b"),
            ["...-", "...-", "XX.-", "XXX-"]
        );
    }

    #[test]
    fn comments_and_blank_lines_are_ignored() {
        assert_eq!(
            expand("# nothing reaches x/a\n\nallow all  # start\ndeny * -> x/a\n"),
            ["....", "X...", "X...", "X..."]
        );
    }

    #[test]
    fn the_first_line_must_be_the_starting_point() {
        let error = Expectation::parse("allow x/a -> x/b").unwrap_err();
        assert!(error.to_string().contains("starts with"), "{error}");
        assert!(Expectation::parse("  # only a comment\n").is_err());
    }

    #[test]
    fn malformed_lines_name_their_line_number() {
        for text in [
            "deny all\nallow x/a x/b",
            "deny all\npermit x/a -> x/b",
            "deny all\nallow x/A -> x/b",
            "deny all\nallow x -> x/b",
            "deny all\nunserved",
        ] {
            let error = Expectation::parse(text).unwrap_err();
            assert!(
                format!("{error:#}").starts_with("line 2"),
                "{text:?}: {error:#}"
            );
        }
    }

    #[test]
    fn a_pattern_that_matches_no_pod_is_an_error() {
        let expectation = Expectation::parse("deny all\nallow q/* -> x/a").unwrap();
        let error = expectation.expand(&cluster()).unwrap_err();
        assert!(format!("{error:#}").contains("line 2"), "{error:#}");
        let expectation = Expectation::parse("deny all\nallow x/a -> */d").unwrap();
        assert!(expectation.expand(&cluster()).is_err());
    }
}
