//! The benchmark report: sections that each explain a setup and carry tables, plots and target
//! checks, rendered to `report.md`, `report.json` and one PNG per plot.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use anyhow::{Context as _, bail};
use plotters::{
    coord::ranged1d::{AsRangedCoord, ValueFormatter},
    prelude::*,
};
use serde::Serialize;

/// The font the plots are drawn with, installed by `cargo xtask setup` (Debian
/// `fonts-dejavu-core`); read directly, so no font configuration is involved.
pub const FONT_FILE: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

const PLOT_SIZE: (u32, u32) = (960, 600);

/// A whole report: its sections in order.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub title: String,
    /// What ran, on what machine, and how long each measurement lasted.
    pub intro: String,
    pub sections: Vec<Section>,
}

/// One family of measurements.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    pub title: String,
    /// A paragraph on how the figures were measured.
    pub setup: String,
    pub tables: Vec<Table>,
    pub plots: Vec<Plot>,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Table {
    pub caption: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// A line plot of one or more series against a shared x axis.
#[derive(Debug, Clone, Serialize)]
pub struct Plot {
    /// The PNG's file name, written next to the report.
    pub file: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Whether the x axis is logarithmic (rule counts from 10 to 100,000).
    pub log_x: bool,
    pub series: Vec<Series>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A target the figures are judged on, and whether the measurement meets it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What is measured, e.g. "established flow, IPv4, 10 entries".
    pub what: String,
    /// The goal, e.g. "<= 60 ns".
    pub goal: String,
    /// The measured value, e.g. "98.2 ns".
    pub measured: String,
    pub met: bool,
}

impl Report {
    /// Writes `report.md`, `report.json` and every plot's PNG into `dir`; returns the path of
    /// `report.md`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for plot in self.sections.iter().flat_map(|section| &section.plots) {
            plot.render(&dir.join(&plot.file))?;
        }
        let json_file = dir.join("report.json");
        let json = serde_json::to_string_pretty(self).context("serializing the report")?;
        fs::write(&json_file, json + "\n")
            .with_context(|| format!("writing {}", json_file.display()))?;
        let markdown_file = dir.join("report.md");
        fs::write(&markdown_file, self.markdown())
            .with_context(|| format!("writing {}", markdown_file.display()))?;
        Ok(markdown_file)
    }

    /// The report in Markdown: the missed targets first, then each section.
    pub fn markdown(&self) -> String {
        let mut out = format!("# {}\n\n{}\n\n", self.title, self.intro.trim());
        let missed: Vec<(&Section, &Target)> = self
            .sections
            .iter()
            .flat_map(|section| section.targets.iter().map(move |target| (section, target)))
            .filter(|(_, target)| !target.met)
            .collect();
        let checked: usize = self.sections.iter().map(|s| s.targets.len()).sum();
        out.push_str("## Targets\n\n");
        if missed.is_empty() {
            let _ = writeln!(out, "All {checked} targets are met.\n");
        } else {
            let _ = writeln!(out, "{} of {checked} targets are missed:\n", missed.len());
            for (section, target) in missed {
                let _ = writeln!(
                    out,
                    "- {}: {}: goal {}, measured {}",
                    section.title, target.what, target.goal, target.measured
                );
            }
            out.push('\n');
        }
        for section in &self.sections {
            section.write_markdown(&mut out);
        }
        out
    }
}

impl Section {
    fn write_markdown(&self, out: &mut String) {
        let _ = write!(out, "## {}\n\n{}\n\n", self.title, self.setup.trim());
        for table in &self.tables {
            table.write_markdown(out);
        }
        for plot in &self.plots {
            let _ = write!(out, "![{}]({})\n\n", plot.title, plot.file);
        }
        if !self.targets.is_empty() {
            let table = Table {
                caption: "Targets".to_owned(),
                columns: ["target", "goal", "measured", "verdict"]
                    .map(String::from)
                    .to_vec(),
                rows: self
                    .targets
                    .iter()
                    .map(|target| {
                        vec![
                            target.what.clone(),
                            target.goal.clone(),
                            target.measured.clone(),
                            if target.met { "met" } else { "**MISSED**" }.to_owned(),
                        ]
                    })
                    .collect(),
            };
            table.write_markdown(out);
        }
    }
}

impl Table {
    fn write_markdown(&self, out: &mut String) {
        let _ = write!(out, "**{}**\n\n", self.caption);
        let row = |cells: &[String]| {
            let cells: Vec<String> = cells.iter().map(|cell| cell.replace('|', "\\|")).collect();
            format!("| {} |\n", cells.join(" | "))
        };
        out.push_str(&row(&self.columns));
        out.push_str(&row(&vec!["---".to_owned(); self.columns.len()]));
        for cells in &self.rows {
            out.push_str(&row(cells));
        }
        out.push('\n');
    }
}

impl Plot {
    /// Draws the plot as a PNG at `file`.
    pub fn render(&self, file: &Path) -> anyhow::Result<()> {
        register_font()?;
        let points = || self.series.iter().flat_map(|series| &series.points);
        let (mut x_min, mut x_max, mut y_max) = (f64::INFINITY, f64::NEG_INFINITY, 0f64);
        for &(x, y) in points() {
            x_min = x_min.min(x);
            x_max = x_max.max(x);
            y_max = y_max.max(y);
        }
        if !x_min.is_finite() || x_min >= x_max {
            bail!("plot {}: needs points at two x values at least", self.title);
        }
        // Headroom above the data for the legend in the upper right corner.
        let y_range = 0.0..(y_max * 1.5).max(f64::MIN_POSITIVE);
        if self.log_x {
            self.draw(file, (x_min..x_max).log_scale(), y_range)
        } else {
            self.draw(file, x_min..x_max, y_range)
        }
    }

    fn draw<X>(&self, file: &Path, x_range: X, y_range: std::ops::Range<f64>) -> anyhow::Result<()>
    where
        X: AsRangedCoord<Value = f64>,
        X::CoordDescType: ValueFormatter<f64>,
    {
        let root = BitMapBackend::new(file, PLOT_SIZE).into_drawing_area();
        let drawing = |error| anyhow::anyhow!("drawing {}: {error}", file.display());
        root.fill(&WHITE).map_err(|e| drawing(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, ("sans-serif", 24))
            .margin(16)
            .margin_right(48)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(x_range, y_range)
            .map_err(|e| drawing(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .x_label_formatter(&|x| format_axis(*x))
            .y_label_formatter(&|y| format_axis(*y))
            .y_desc(&self.y_label)
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(|e| drawing(e.to_string()))?;
        for (index, series) in self.series.iter().enumerate() {
            let color = Palette99::pick(index).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    series.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(|e| drawing(e.to_string()))?
                .label(&series.name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(
                    series
                        .points
                        .iter()
                        .map(|&point| Circle::new(point, 4, color.filled())),
                )
                .map_err(|e| drawing(e.to_string()))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| drawing(e.to_string()))?;
        root.present().map_err(|e| drawing(e.to_string()))?;
        Ok(())
    }
}

/// An axis label: whole numbers without decimals, others with up to two.
fn format_axis(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    }
}

/// Makes FONT_FILE plotters' sans-serif font, once per process.
fn register_font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = fs::read(FONT_FILE).map_err(|error| {
                format!("reading {FONT_FILE} ({error}): run `cargo xtask setup` as root")
            })?;
            // Plotters keeps registered fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{FONT_FILE} is not a font plotters can read"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            title: "Benchmarks".to_owned(),
            intro: "Two cores.".to_owned(),
            sections: vec![Section {
                title: "Per packet".to_owned(),
                setup: "BPF_PROG_TEST_RUN, repeat 100,000.".to_owned(),
                tables: vec![Table {
                    caption: "ns per packet".to_owned(),
                    columns: vec!["entries".to_owned(), "established | v4".to_owned()],
                    rows: vec![
                        vec!["10".to_owned(), "51.0".to_owned()],
                        vec!["100000".to_owned(), "75.5".to_owned()],
                    ],
                }],
                plots: vec![Plot {
                    file: "per-packet.png".to_owned(),
                    title: "ns per packet".to_owned(),
                    x_label: "policy entries".to_owned(),
                    y_label: "ns".to_owned(),
                    log_x: true,
                    series: vec![Series {
                        name: "established".to_owned(),
                        points: vec![(10.0, 51.0), (100_000.0, 75.5)],
                    }],
                }],
                targets: vec![
                    Target {
                        what: "established, 10 entries".to_owned(),
                        goal: "<= 60 ns".to_owned(),
                        measured: "51.0 ns".to_owned(),
                        met: true,
                    },
                    Target {
                        what: "established, 100,000 entries".to_owned(),
                        goal: "<= 60 ns".to_owned(),
                        measured: "75.5 ns".to_owned(),
                        met: false,
                    },
                ],
            }],
        }
    }

    #[test]
    fn markdown_lists_missed_targets_first_and_escapes_cells() {
        let markdown = sample().markdown();
        let summary = markdown.find("1 of 2 targets are missed").expect("summary");
        let missed = markdown
            .find("- Per packet: established, 100,000 entries: goal <= 60 ns, measured 75.5 ns")
            .expect("the missed target is listed");
        let section = markdown.find("## Per packet").expect("section");
        assert!(summary < missed && missed < section);
        assert!(
            markdown.contains("| entries | established \\| v4 |\n| --- | --- |\n| 10 | 51.0 |")
        );
        assert!(markdown.contains("![ns per packet](per-packet.png)"));
        assert!(markdown.contains("| established, 10 entries | <= 60 ns | 51.0 ns | met |"));
        assert!(markdown.contains("| 75.5 ns | **MISSED** |"));
    }

    #[test]
    fn markdown_says_when_every_target_is_met() {
        let mut report = sample();
        report.sections[0].targets.retain(|target| target.met);
        assert!(report.markdown().contains("All 1 targets are met."));
    }

    #[test]
    fn write_renders_markdown_json_and_png() {
        let dir = std::env::temp_dir().join(format!("xtask-report-{}", std::process::id()));
        let report = sample();
        let markdown_file = report.write(&dir).expect("report written");
        assert_eq!(markdown_file, dir.join("report.md"));
        assert_eq!(
            fs::read_to_string(&markdown_file).unwrap(),
            report.markdown()
        );
        let json: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
        assert_eq!(json["sections"][0]["targets"][1]["met"], false);
        assert_eq!(
            json["sections"][0]["plots"][0]["series"][0]["points"][1][1],
            75.5
        );
        let png = fs::read(dir.join("per-packet.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(png.len() > 5_000, "a drawn plot, not an empty image");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn axis_labels_drop_needless_decimals() {
        assert_eq!(format_axis(10_000.0), "10000");
        assert_eq!(format_axis(0.5), "0.5");
        assert_eq!(format_axis(1.25), "1.25");
        assert_eq!(format_axis(2.0), "2");
    }

    #[test]
    fn a_plot_needs_two_x_values() {
        let mut plot = sample().sections[0].plots[0].clone();
        plot.series[0].points.truncate(1);
        let file = std::env::temp_dir().join(format!("xtask-plot-{}.png", std::process::id()));
        assert!(plot.render(&file).is_err());
    }
}
