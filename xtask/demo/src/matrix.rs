//! How far the lab's probe and `explain` agree, and the side-by-side picture of their matrices
//! the demo prints.

use std::fmt::Write as _;

use policy_core::matrix::{Cell, Matrix};

/// The cell `from -> to` of `matrix`: `None` when it has no such cell or nothing to reach.
fn allowed(matrix: &Matrix, from: &str, to: &str) -> Option<bool> {
    matrix.get(from, to)?.allowed()
}

/// How many differing pairs [`Agreement::describe`] names.
const SHOWN_DISAGREEMENTS: usize = 3;

/// A pair on which the lab and `explain` differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disagreement {
    pub from: String,
    pub to: String,
    pub probed: bool,
    pub predicted: bool,
}

/// How far what the lab saw matches what `explain` predicted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Agreement {
    /// Pairs that both matrices have a verdict for.
    pub compared: usize,
    pub disagreements: Vec<Disagreement>,
}

impl Agreement {
    /// Compares the two over the probe's pods; pairs either side has no verdict for are skipped.
    pub fn of(probed: &Matrix, predicted: &Matrix) -> Self {
        let mut agreement = Self::default();
        for from in probed.pods() {
            for to in probed.pods() {
                let (Some(seen), Some(expected)) =
                    (allowed(probed, from, to), allowed(predicted, from, to))
                else {
                    continue;
                };
                agreement.compared += 1;
                if seen != expected {
                    agreement.disagreements.push(Disagreement {
                        from: from.clone(),
                        to: to.clone(),
                        probed: seen,
                        predicted: expected,
                    });
                }
            }
        }
        agreement
    }

    pub fn agreed(&self) -> usize {
        self.compared - self.disagreements.len()
    }

    /// One line: `lab and explain agree on all 36 pairs`, or which pairs they differ on.
    pub fn describe(&self) -> String {
        if self.disagreements.is_empty() {
            return format!("lab and explain agree on all {} pairs", self.compared);
        }
        let verdict = |allowed: bool| if allowed { "allowed" } else { "denied" };
        let mut pairs: Vec<String> = self
            .disagreements
            .iter()
            .take(SHOWN_DISAGREEMENTS)
            .map(|pair| {
                format!(
                    "{} -> {} (lab {}, explain {})",
                    pair.from,
                    pair.to,
                    verdict(pair.probed),
                    verdict(pair.predicted)
                )
            })
            .collect();
        if let Some(more) = self.disagreements.len().checked_sub(SHOWN_DISAGREEMENTS)
            && more > 0
        {
            pairs.push(format!("and {more} more"));
        }
        format!(
            "lab and explain DISAGREE on {} of {} pairs: {}",
            self.disagreements.len(),
            self.compared,
            pairs.join(", ")
        )
    }
}

/// A moment of a step: the lab's matrix next to `explain`'s.
pub struct Snapshot<'a> {
    pub label: &'a str,
    pub probed: &'a Matrix,
    pub predicted: &'a Matrix,
}

/// The matrices of `snapshots` side by side, rows (clients) numbered and named, columns
/// (servers) numbered, in the order of `pods`; each snapshot shows the lab's matrix, then
/// `explain`'s. Every line ends without trailing blanks.
pub fn render(pods: &[String], snapshots: &[Snapshot<'_>]) -> String {
    const LAB: &str = "lab";
    const EXPLAIN: &str = "explain";
    const GAP: &str = "   ";
    /// Wider between snapshots than between the two matrices of one.
    const SNAPSHOT_GAP: &str = "      ";
    let label_width = pods.iter().map(String::len).max().unwrap_or(0) + 4;
    let grid_width = (2 * pods.len()).saturating_sub(1).max(EXPLAIN.len());
    let snapshot_width = 2 * grid_width + GAP.len();
    let mut lines = vec![String::new(), String::new(), String::new()];
    for line in &mut lines {
        line.push_str(&" ".repeat(label_width));
    }
    let numbers: Vec<String> = (1..=pods.len()).map(|n| (n % 10).to_string()).collect();
    let numbers = numbers.join(" ");
    for snapshot in snapshots {
        let _ = write!(
            lines[0],
            "{SNAPSHOT_GAP}{:<snapshot_width$}",
            snapshot.label
        );
        let _ = write!(
            lines[1],
            "{SNAPSHOT_GAP}{LAB:<grid_width$}{GAP}{EXPLAIN:<grid_width$}"
        );
        let _ = write!(
            lines[2],
            "{SNAPSHOT_GAP}{numbers:<grid_width$}{GAP}{numbers:<grid_width$}"
        );
    }
    for (row, from) in pods.iter().enumerate() {
        let mut line = format!("{:>2} {from:<width$}", row + 1, width = label_width - 3);
        for snapshot in snapshots {
            for (gap, grid) in [(SNAPSHOT_GAP, snapshot.probed), (GAP, snapshot.predicted)] {
                let cells: Vec<String> = pods
                    .iter()
                    .map(|to| grid.get(from, to).map_or('-', Cell::symbol).to_string())
                    .collect();
                let _ = write!(line, "{gap}{:<grid_width$}", cells.join(" "));
            }
        }
        lines.push(line);
    }
    let mut text = String::new();
    for line in lines {
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const PODS: [&str; 3] = ["shop/web", "shop/db", "dev/tester"];

    /// A matrix over [`PODS`] from rows of symbols: `.` allowed, `X` denied, `-` nothing probed.
    fn grid(rows: [&str; 3]) -> Matrix {
        let pods: Vec<String> = PODS.iter().map(|pod| (*pod).to_owned()).collect();
        Matrix::from_fn(pods, |from, to| {
            let row = PODS.iter().position(|pod| *pod == from).unwrap();
            let column = PODS.iter().position(|pod| *pod == to).unwrap();
            match rows[row].chars().nth(column) {
                Some('.') => Cell::Allowed,
                Some('X') => Cell::Denied,
                _ => Cell::Unserved,
            }
        })
    }

    #[test]
    fn counts_agreeing_pairs_and_skips_unprobed_ones() {
        let probed = grid(["...", "-..", "..."]);
        let predicted = grid(["...", "...", "..."]);
        let agreement = Agreement::of(&probed, &predicted);
        assert_eq!(agreement.compared, 8);
        assert!(agreement.disagreements.is_empty());
        assert_eq!(agreement.describe(), "lab and explain agree on all 8 pairs");
    }

    #[test]
    fn names_every_pair_the_lab_and_explain_differ_on() {
        let probed = grid([".X.", "...", "..X"]);
        let predicted = grid(["...", "...", "X.X"]);
        let agreement = Agreement::of(&probed, &predicted);
        assert_eq!(agreement.compared, 9);
        assert_eq!(agreement.agreed(), 7);
        assert_eq!(
            agreement.disagreements,
            [
                Disagreement {
                    from: "shop/web".into(),
                    to: "shop/db".into(),
                    probed: false,
                    predicted: true,
                },
                Disagreement {
                    from: "dev/tester".into(),
                    to: "shop/web".into(),
                    probed: true,
                    predicted: false,
                },
            ]
        );
        assert_eq!(
            agreement.describe(),
            "lab and explain DISAGREE on 2 of 9 pairs: shop/web -> shop/db (lab denied, \
             explain allowed), dev/tester -> shop/web (lab allowed, explain denied)"
        );
    }

    #[test]
    fn names_a_few_differing_pairs_and_counts_the_rest() {
        let probed = grid(["...", "...", "..."]);
        let predicted = grid(["XXX", "XX.", "..."]);
        let description = Agreement::of(&probed, &predicted).describe();
        assert_eq!(
            description,
            "lab and explain DISAGREE on 5 of 9 pairs: shop/web -> shop/web (lab allowed, \
             explain denied), shop/web -> shop/db (lab allowed, explain denied), shop/web -> \
             dev/tester (lab allowed, explain denied), and 2 more"
        );
    }

    #[test]
    fn renders_snapshots_side_by_side() {
        let open = grid(["...", "...", "..."]);
        let closed = grid([".X.", "...", ".X."]);
        let unprobed = grid(["..-", "...", "..."]);
        let pods: Vec<String> = PODS.iter().map(|pod| (*pod).to_owned()).collect();
        let text = render(
            &pods,
            &[
                Snapshot {
                    label: "before",
                    probed: &unprobed,
                    predicted: &open,
                },
                Snapshot {
                    label: "after",
                    probed: &closed,
                    predicted: &closed,
                },
            ],
        );
        let expected = [
            "                    before                 after",
            "                    lab       explain      lab       explain",
            "                    1 2 3     1 2 3        1 2 3     1 2 3",
            " 1 shop/web         . . -     . . .        . X .     . X .",
            " 2 shop/db          . . .     . . .        . . .     . . .",
            " 3 dev/tester       . . .     . . .        . X .     . X .",
        ];
        assert_eq!(text.lines().collect::<Vec<_>>(), expected);
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn renders_rows_in_the_order_given() {
        let open = grid(["...", "...", "..."]);
        let pods = vec!["dev/tester".to_owned(), "shop/web".to_owned()];
        let text = render(
            &pods,
            &[Snapshot {
                label: "now",
                probed: &open,
                predicted: &open,
            }],
        );
        let rows: Vec<&str> = text.lines().skip(3).collect();
        assert_eq!(rows.len(), 2);
        assert!(rows[0].starts_with(" 1 dev/tester"));
        assert!(rows[1].starts_with(" 2 shop/web"));
    }
}
