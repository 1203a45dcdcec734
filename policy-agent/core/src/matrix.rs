//! Reachability matrices: who reaches whom on one port, as `explain` predicts it, the lab's probe
//! observes it and a scenario expects it, and a readable picture of where two of them differ.
//!
//! In JSON (`explain -o json`, `lab probe -o json`) a matrix is
//! `{"protocol", "port", "pods", "allowed": {client: {server: true | false | null}}}`, `null`
//! where a Service probe has no target; the probe adds `via` and `wait_ms`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
};

use serde::{Deserialize, Serialize};

use crate::printable;

/// One cell: can the client (row) reach the server (column)?
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Option<bool>", into = "Option<bool>")]
pub enum Cell {
    Allowed,
    Denied,
    /// A Service probe to a server that no Service exposes on the probed port.
    Unserved,
}

impl From<Option<bool>> for Cell {
    fn from(allowed: Option<bool>) -> Self {
        match allowed {
            Some(true) => Self::Allowed,
            Some(false) => Self::Denied,
            None => Self::Unserved,
        }
    }
}

impl From<Cell> for Option<bool> {
    fn from(cell: Cell) -> Self {
        match cell {
            Cell::Allowed => Some(true),
            Cell::Denied => Some(false),
            Cell::Unserved => None,
        }
    }
}

impl From<bool> for Cell {
    fn from(allowed: bool) -> Self {
        Some(allowed).into()
    }
}

impl Cell {
    /// Whether the client reaches the server; `None` where there is nothing to reach.
    pub fn allowed(self) -> Option<bool> {
        self.into()
    }

    /// `.` allowed, `X` denied, `-` nothing to reach.
    pub fn symbol(self) -> char {
        match self {
            Self::Allowed => '.',
            Self::Denied => 'X',
            Self::Unserved => '-',
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::Unserved => "null (no Service port)",
        }
    }
}

/// A reachability matrix over a set of pods named `namespace/name`, with a cell for every
/// ordered pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "MatrixJson", try_from = "MatrixJson")]
pub struct Matrix {
    pods: Vec<String>,
    /// By (client, server).
    cells: BTreeMap<(String, String), Cell>,
}

/// How a [`Matrix`] reads and writes in JSON.
#[derive(Serialize, Deserialize)]
struct MatrixJson {
    pods: Vec<String>,
    /// Client, then server.
    allowed: BTreeMap<String, BTreeMap<String, Cell>>,
}

impl From<Matrix> for MatrixJson {
    fn from(matrix: Matrix) -> Self {
        let mut allowed: BTreeMap<String, BTreeMap<String, Cell>> = BTreeMap::new();
        for ((from, to), cell) in matrix.cells {
            allowed.entry(from).or_default().insert(to, cell);
        }
        Self {
            pods: matrix.pods,
            allowed,
        }
    }
}

impl TryFrom<MatrixJson> for Matrix {
    type Error = String;

    /// Checks that every ordered pair of pods has a cell.
    fn try_from(json: MatrixJson) -> Result<Self, String> {
        let mut cells = BTreeMap::new();
        for from in &json.pods {
            let row = json
                .allowed
                .get(from)
                .ok_or_else(|| format!("the matrix has no row for client {from}"))?;
            for to in &json.pods {
                let cell = row
                    .get(to)
                    .ok_or_else(|| format!("the matrix has no cell for {from} -> {to}"))?;
                cells.insert((from.clone(), to.clone()), *cell);
            }
        }
        Ok(Self {
            pods: json.pods,
            cells,
        })
    }
}

/// A matrix for one protocol and port, as `explain` and the lab's probe print it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reachability {
    pub protocol: String,
    pub port: u16,
    #[serde(flatten)]
    pub matrix: Matrix,
    /// How the client reached the server (`pod`, `service`, `nodeport`): from the probe, and
    /// from `explain --via service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// How long the probe waited for the agents to apply the manifests; only from the probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

impl Reachability {
    /// Parses the JSON printed by the probe or by explain.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// A grid for people: rows are clients, columns servers (numbered as the rows).
    pub fn table(&self) -> String {
        let pods = self.matrix.pods();
        let mut text = match self.via.as_deref() {
            None | Some("pod") => format!(
                "{}/{}: rows are clients (from), columns servers (to); Y allowed, - denied.\n\
                 A pod always reaches its own address (that traffic never crosses its veth).\n\n",
                self.protocol, self.port
            ),
            Some(via) => format!(
                "{}/{} via {}: rows are clients (from), columns servers (to); Y allowed, - \
                 denied.\nA pod reaching itself this way is decided by ClusterNetworkPolicy \
                 alone.\n\n",
                self.protocol,
                self.port,
                printable(via)
            ),
        };
        let names: Vec<_> = pods.iter().map(|pod| printable(pod)).collect();
        let width = names
            .iter()
            .map(|name| name.chars().count())
            .max()
            .unwrap_or(0);
        let number_width = pods.len().to_string().len();
        text.push_str(&format!("{:>w$}  {:<width$} ", "", "", w = number_width));
        for column in 1..=pods.len() {
            text.push_str(&format!(" {column:>number_width$}"));
        }
        text.push('\n');
        for (row, (client, name)) in pods.iter().zip(&names).enumerate() {
            text.push_str(&format!("{:>number_width$}  {name:<width$} ", row + 1));
            for server in pods {
                let mark = match self.matrix.get(client, server) {
                    Some(Cell::Allowed) => "Y",
                    _ => "-",
                };
                text.push_str(&format!(" {mark:>number_width$}"));
            }
            text.push('\n');
        }
        text
    }
}

/// A cell where an observed matrix differs from the expected one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrongCell {
    pub from: String,
    pub to: String,
    pub expected: Cell,
    pub observed: Cell,
}

/// How an observed matrix differs from the expected one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Difference {
    /// The two matrices are over different pods: the cells cannot be compared.
    Pods {
        missing: Vec<String>,
        unexpected: Vec<String>,
    },
    Cells(Vec<WrongCell>),
}

impl Matrix {
    /// A matrix over `pods` with every cell `fill`.
    pub fn filled(pods: &[String], fill: Cell) -> Self {
        let cells = pods
            .iter()
            .flat_map(|from| {
                pods.iter()
                    .map(move |to| ((from.clone(), to.clone()), fill))
            })
            .collect();
        Self {
            pods: pods.to_vec(),
            cells,
        }
    }

    /// The matrix over `pods` whose cell `from -> to` is `cell(from, to)`.
    pub fn from_fn(pods: Vec<String>, mut cell: impl FnMut(&str, &str) -> Cell) -> Self {
        let mut cells = BTreeMap::new();
        for from in &pods {
            for to in &pods {
                cells.insert((from.clone(), to.clone()), cell(from, to));
            }
        }
        Self { pods, cells }
    }

    pub fn pods(&self) -> &[String] {
        &self.pods
    }

    pub fn get(&self, from: &str, to: &str) -> Option<Cell> {
        self.cells.get(&(from.to_owned(), to.to_owned())).copied()
    }

    /// Sets the cell `from -> to`; pods that are not in the matrix are ignored.
    pub fn set(&mut self, from: &str, to: &str, cell: Cell) {
        if let Some(slot) = self.cells.get_mut(&(from.to_owned(), to.to_owned())) {
            *slot = cell;
        }
    }

    /// This matrix with the cells that are `Unserved` in `mask` made `Unserved` too. `explain`
    /// knows nothing of Services, so its answer is compared only where a Service port exists.
    pub fn masked_by(&self, mask: &Self) -> Self {
        let mut masked = self.clone();
        for (key, cell) in &mut masked.cells {
            if mask.cells.get(key) == Some(&Cell::Unserved) {
                *cell = Cell::Unserved;
            }
        }
        masked
    }

    /// Where `observed` differs from `self`, or `None` when they agree.
    pub fn difference(&self, observed: &Self) -> Option<Difference> {
        let expected_pods: BTreeSet<&String> = self.pods.iter().collect();
        let observed_pods: BTreeSet<&String> = observed.pods.iter().collect();
        if expected_pods != observed_pods {
            return Some(Difference::Pods {
                missing: expected_pods
                    .difference(&observed_pods)
                    .map(|pod| (*pod).clone())
                    .collect(),
                unexpected: observed_pods
                    .difference(&expected_pods)
                    .map(|pod| (*pod).clone())
                    .collect(),
            });
        }
        let wrong: Vec<WrongCell> = self
            .cells
            .iter()
            .filter_map(|((from, to), expected)| {
                let observed = observed.get(from, to)?;
                (observed != *expected).then(|| WrongCell {
                    from: from.clone(),
                    to: to.clone(),
                    expected: *expected,
                    observed,
                })
            })
            .collect();
        (!wrong.is_empty()).then_some(Difference::Cells(wrong))
    }

    /// The matrix as a grid: servers in columns, clients in rows, `.` allowed, `X` denied, `-`
    /// null, and `!` after every cell listed in `wrong`.
    pub fn render(&self, wrong: &[WrongCell]) -> String {
        let marked: BTreeSet<(&str, &str)> = wrong
            .iter()
            .map(|cell| (cell.from.as_str(), cell.to.as_str()))
            .collect();
        let corner = "from\\to";
        let label = self
            .pods
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(0)
            .max(corner.len());
        let column = self.pods.iter().map(String::len).max().unwrap_or(0).max(2);
        let mut lines = Vec::with_capacity(self.pods.len() + 1);
        let mut header = format!("{corner:>label$}");
        for to in &self.pods {
            header.push_str(&format!(" {to:<column$}"));
        }
        lines.push(header);
        for from in &self.pods {
            let mut row = format!("{from:>label$}");
            for to in &self.pods {
                let symbol = self.get(from, to).map_or('?', Cell::symbol);
                let mark = if marked.contains(&(from.as_str(), to.as_str())) {
                    '!'
                } else {
                    ' '
                };
                row.push_str(&format!(" {symbol}{mark}{:<pad$}", "", pad = column - 2));
            }
            lines.push(row);
        }
        let mut text = String::new();
        for line in lines {
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

/// How many wrong cells a report lists in words; the grid marks them all.
const LISTED_CELLS: usize = 6;

impl Difference {
    /// What differs, with the observed matrix drawn and the wrong cells marked and listed.
    pub fn report(&self, observed: &Matrix) -> String {
        // `writeln!` into a String cannot fail: its results are ignored below.
        match self {
            Self::Pods {
                missing,
                unexpected,
            } => format!(
                "the matrix is over other pods: missing [{}], unexpected [{}]\n",
                missing.join(", "),
                unexpected.join(", ")
            ),
            Self::Cells(wrong) => {
                let mut text = observed.render(wrong);
                for cell in wrong.iter().take(LISTED_CELLS) {
                    let _ = writeln!(
                        text,
                        "  {} -> {}: expected {}, got {}",
                        cell.from,
                        cell.to,
                        cell.expected.describe(),
                        cell.observed.describe()
                    );
                }
                if wrong.len() > LISTED_CELLS {
                    let _ = writeln!(
                        text,
                        "  and {} more wrong cells",
                        wrong.len() - LISTED_CELLS
                    );
                }
                text
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> Vec<String> {
        vec!["x/a".to_owned(), "x/b".to_owned()]
    }

    const PROBE: &str = r#"{"protocol": "TCP", "port": 80, "pods": ["x/a", "x/b"],
        "allowed": {"x/a": {"x/a": true, "x/b": false}, "x/b": {"x/a": true, "x/b": null}},
        "via": "service", "wait_ms": 12}"#;

    #[test]
    fn reads_the_probe_json() {
        let json = Reachability::parse(PROBE).unwrap();
        assert_eq!(json.wait_ms, Some(12));
        assert_eq!(json.via.as_deref(), Some("service"));
        let matrix = json.matrix;
        assert_eq!(matrix.get("x/a", "x/b"), Some(Cell::Denied));
        assert_eq!(matrix.get("x/b", "x/a"), Some(Cell::Allowed));
        assert_eq!(matrix.get("x/b", "x/b"), Some(Cell::Unserved));
    }

    #[test]
    fn reads_the_explain_json_without_probe_fields() {
        let text = r#"{"protocol": "UDP", "port": 81, "pods": ["x/a"],
            "allowed": {"x/a": {"x/a": true}}}"#;
        let json = Reachability::parse(text).unwrap();
        assert_eq!(json.wait_ms, None);
        assert_eq!(
            json.matrix,
            Matrix::filled(&["x/a".to_owned()], Cell::Allowed)
        );
    }

    #[test]
    fn a_missing_cell_is_an_error() {
        let text = r#"{"protocol": "TCP", "port": 80, "pods": ["x/a", "x/b"],
            "allowed": {"x/a": {"x/a": true, "x/b": true}, "x/b": {"x/b": true}}}"#;
        let error = Reachability::parse(text).unwrap_err();
        assert!(error.to_string().contains("x/b -> x/a"), "{error}");
    }

    #[test]
    fn writes_what_it_reads() {
        let json = Reachability::parse(PROBE).unwrap();
        let text = serde_json::to_string(&json).unwrap();
        assert_eq!(Reachability::parse(&text).unwrap(), json);
        assert!(text.contains(r#""x/b":{"x/a":true,"x/b":null}"#), "{text}");
    }

    #[test]
    fn equal_matrices_have_no_difference() {
        let matrix = Reachability::parse(PROBE).unwrap().matrix;
        assert_eq!(matrix.difference(&matrix.clone()), None);
    }

    #[test]
    fn lists_every_wrong_cell() {
        let expected = Matrix::filled(&pods(), Cell::Allowed);
        let observed = Reachability::parse(PROBE).unwrap().matrix;
        let Some(Difference::Cells(wrong)) = expected.difference(&observed) else {
            panic!("the cells differ");
        };
        assert_eq!(
            wrong,
            vec![
                WrongCell {
                    from: "x/a".into(),
                    to: "x/b".into(),
                    expected: Cell::Allowed,
                    observed: Cell::Denied,
                },
                WrongCell {
                    from: "x/b".into(),
                    to: "x/b".into(),
                    expected: Cell::Allowed,
                    observed: Cell::Unserved,
                },
            ]
        );
    }

    #[test]
    fn other_pods_are_a_difference_of_pods() {
        let expected = Matrix::filled(&pods(), Cell::Allowed);
        let observed = Matrix::filled(&["x/a".to_owned(), "x/d".to_owned()], Cell::Allowed);
        assert_eq!(
            expected.difference(&observed),
            Some(Difference::Pods {
                missing: vec!["x/b".into()],
                unexpected: vec!["x/d".into()],
            })
        );
    }

    #[test]
    fn the_same_pods_in_another_order_compare_cell_by_cell() {
        let expected = Matrix::filled(&pods(), Cell::Denied);
        let observed = Matrix::filled(&["x/b".to_owned(), "x/a".to_owned()], Cell::Denied);
        assert_eq!(expected.difference(&observed), None);
    }

    #[test]
    fn masking_hides_cells_without_a_service() {
        let explain = Matrix::filled(&pods(), Cell::Denied);
        let mut expected = Matrix::filled(&pods(), Cell::Denied);
        expected.set("x/a", "x/b", Cell::Unserved);
        let masked = explain.masked_by(&expected);
        assert_eq!(masked.get("x/a", "x/b"), Some(Cell::Unserved));
        assert_eq!(masked.get("x/b", "x/a"), Some(Cell::Denied));
        assert_eq!(expected.difference(&masked), None);
    }

    #[test]
    fn a_long_report_lists_the_first_cells_and_counts_the_rest() {
        let pods: Vec<String> = (0..3).map(|index| format!("x/p{index}")).collect();
        let expected = Matrix::filled(&pods, Cell::Allowed);
        let observed = Matrix::filled(&pods, Cell::Denied);
        let report = expected.difference(&observed).unwrap().report(&observed);
        assert_eq!(
            report.matches("expected allowed, got denied").count(),
            LISTED_CELLS
        );
        assert!(report.ends_with("  and 3 more wrong cells\n"), "{report}");
    }

    #[test]
    fn renders_servers_in_columns_and_marks_wrong_cells() {
        let expected = Matrix::filled(&pods(), Cell::Allowed);
        let observed = Reachability::parse(PROBE).unwrap().matrix;
        let difference = expected.difference(&observed).unwrap();
        let report = difference.report(&observed);
        let lines: Vec<&str> = report.lines().collect();
        assert_eq!(lines[0], "from\\to x/a x/b");
        assert_eq!(lines[1], "    x/a .   X!");
        assert_eq!(lines[2], "    x/b .   -!");
        assert_eq!(lines[3], "  x/a -> x/b: expected allowed, got denied");
        assert_eq!(
            lines[4],
            "  x/b -> x/b: expected allowed, got null (no Service port)"
        );
    }
}
