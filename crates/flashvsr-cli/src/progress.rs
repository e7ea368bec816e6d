//! Progress reporting: an indicatif bar on a terminal, plain periodic lines otherwise, nothing
//! with `--quiet`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    Frames,
    Bytes,
}

pub struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    unit: Unit,
    label: String,
    total: Option<u64>,
    pos: u64,
    start: Instant,
    last_line: Instant,
    /// Position of the last plain line (not repeated at the end).
    last_pos: Option<u64>,
}

const PLAIN_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    pub fn frames(label: &str, total: Option<u64>, quiet: bool) -> Progress {
        Progress::new(label, total, quiet, Unit::Frames)
    }

    pub fn bytes(label: &str, total: Option<u64>, quiet: bool) -> Progress {
        Progress::new(label, total, quiet, Unit::Bytes)
    }

    fn new(label: &str, total: Option<u64>, quiet: bool, unit: Unit) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let bar = (!quiet && terminal).then(|| {
            let bar = match total {
                Some(t) => ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr()),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let template = match (unit, total.is_some()) {
                (Unit::Frames, true) => "{msg} [{bar:30}] {pos}/{len} frames, {per_sec}, ETA {eta}",
                (Unit::Frames, false) => "{msg} {spinner} {pos} frames, {per_sec}",
                (Unit::Bytes, true) => {
                    "{msg} [{bar:30}] {bytes}/{total_bytes}, {bytes_per_sec}, ETA {eta}"
                }
                (Unit::Bytes, false) => "{msg} {spinner} {bytes}, {bytes_per_sec}",
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label.to_string());
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        let now = Instant::now();
        Progress {
            bar,
            plain: !quiet && !terminal,
            unit,
            label: label.to_string(),
            total,
            pos: 0,
            start: now,
            last_line: now,
            last_pos: None,
        }
    }

    pub fn set_position(&mut self, pos: u64) {
        self.pos = pos;
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
        } else if self.plain && self.last_line.elapsed() >= PLAIN_EVERY {
            self.last_line = Instant::now();
            self.last_pos = Some(pos);
            eprintln!("{}", self.line());
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        } else if self.plain && self.last_pos != Some(self.pos) {
            self.last_pos = Some(self.pos);
            eprintln!("{}", self.line());
        }
    }

    fn line(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let rate = self.pos as f64 / secs;
        let (pos, total, rate_s) = match self.unit {
            Unit::Frames => (
                self.pos.to_string(),
                self.total.map(|t| t.to_string()),
                format!("{rate:.2} fps"),
            ),
            Unit::Bytes => (
                format!("{:.1} MB", self.pos as f64 / 1e6),
                self.total.map(|t| format!("{:.1} MB", t as f64 / 1e6)),
                format!("{:.1} MB/s", rate / 1e6),
            ),
        };
        match (total, self.total) {
            (Some(t), Some(tn)) if rate > 0.0 => {
                let eta = tn.saturating_sub(self.pos) as f64 / rate;
                format!(
                    "{}: {pos}/{t}, {rate_s}, ETA {}",
                    self.label,
                    format_secs(eta)
                )
            }
            (Some(t), _) => format!("{}: {pos}/{t}, {rate_s}", self.label),
            _ => format!("{}: {pos}, {rate_s}", self.label),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

pub fn format_secs(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, (s / 60) % 60, s % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}
