//! Progress reporting: an indicatif bar on a terminal, plain periodic lines otherwise, nothing
//! with `--quiet`.
//!
//! Frame progress counts frames *read*: the model returns its first frames only after 25 input
//! frames, so counting outputs would sit at 0 through the slowest part; the frames written so
//! far are shown beside it. A total that is only estimated (from the container's duration,
//! when it has no frame count) is shown as `~N`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    Frames,
    Bytes,
}

/// How many frames a run will read, if known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Total {
    Unknown,
    Exact(u64),
    /// From the duration and the frame rate.
    Estimated(u64),
}

impl Total {
    fn count(self) -> Option<u64> {
        match self {
            Total::Unknown => None,
            Total::Exact(n) | Total::Estimated(n) => Some(n),
        }
    }

    fn show(self) -> Option<String> {
        match self {
            Total::Unknown => None,
            Total::Exact(n) => Some(n.to_string()),
            Total::Estimated(n) => Some(format!("~{n}")),
        }
    }
}

pub struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    unit: Unit,
    label: String,
    total: Total,
    pos: u64,
    /// Frames written (frame progress with outputs only).
    written: Option<u64>,
    start: Instant,
    last_line: Instant,
    /// Position of the last plain line (not repeated at the end); the first is printed at the
    /// first step, then one every [`PLAIN_EVERY`].
    last_pos: Option<u64>,
}

const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// A rate with as many decimals as are meaningful: `12 fps`, `2.4 fps`, `0.37 fps`.
pub fn format_rate(per_sec: f64, unit: &str) -> String {
    let r = if per_sec.is_finite() { per_sec } else { 0.0 };
    if r >= 10.0 {
        format!("{r:.0} {unit}")
    } else if r >= 1.0 {
        format!("{r:.1} {unit}")
    } else {
        format!("{r:.2} {unit}")
    }
}

fn fps_key(state: &ProgressState, w: &mut dyn std::fmt::Write) {
    let _ = w.write_str(&format_rate(state.per_sec(), "fps"));
}

impl Progress {
    /// Frames of a command that only counts one thing (bench).
    pub fn frames(label: &str, total: Option<u64>, quiet: bool) -> Progress {
        let total = total.map_or(Total::Unknown, Total::Exact);
        Progress::new(label, total, quiet, Unit::Frames, false)
    }

    /// Frames read, with the frames written shown beside them (upscale).
    pub fn frames_in_out(label: &str, total: Total, quiet: bool) -> Progress {
        Progress::new(label, total, quiet, Unit::Frames, true)
    }

    pub fn bytes(label: &str, total: Option<u64>, quiet: bool) -> Progress {
        let total = total.map_or(Total::Unknown, Total::Exact);
        Progress::new(label, total, quiet, Unit::Bytes, false)
    }

    fn new(label: &str, total: Total, quiet: bool, unit: Unit, in_out: bool) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let bar = (!quiet && terminal).then(|| {
            let bar = ProgressBar::with_draw_target(total.count(), ProgressDrawTarget::stderr());
            let len = if matches!(total, Total::Estimated(_)) {
                "~{len}"
            } else {
                "{len}"
            };
            let template = match (unit, total.count().is_some()) {
                (Unit::Frames, true) => {
                    format!(
                        "{{msg}} [{{bar:30}}] {{pos}}/{len} frames{{prefix}}, {{fps}}, ETA {{eta}}"
                    )
                }
                (Unit::Frames, false) => "{msg} {spinner} {pos} frames{prefix}, {fps}".into(),
                (Unit::Bytes, true) => {
                    "{msg} [{bar:30}] {bytes}/{total_bytes}, {bytes_per_sec}, ETA {eta}".into()
                }
                (Unit::Bytes, false) => "{msg} {spinner} {bytes}, {bytes_per_sec}".into(),
            };
            if let Ok(style) = ProgressStyle::with_template(&template) {
                bar.set_style(style.with_key("fps", fps_key).progress_chars("=> "));
            }
            bar.set_message(label.to_string());
            if in_out {
                bar.set_prefix(" in, 0 out");
            }
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
            written: in_out.then_some(0),
            start: now,
            last_line: now,
            last_pos: None,
        }
    }

    pub fn set_position(&mut self, pos: u64) {
        self.pos = pos;
        if let Some(bar) = &self.bar {
            // An estimated total can be passed: grow it rather than overflow the bar.
            if bar.length().is_some_and(|l| pos > l) {
                bar.set_length(pos);
            }
            bar.set_position(pos);
        } else if self.plain
            && (self.last_line.elapsed() >= PLAIN_EVERY || (self.last_pos.is_none() && pos > 0))
        {
            self.last_line = Instant::now();
            self.last_pos = Some(pos);
            eprintln!("{}", self.line());
        }
    }

    /// Frames read and written so far (for [`Progress::frames_in_out`]).
    pub fn set_frames(&mut self, read: u64, written: u64) {
        self.written = Some(written);
        if let Some(bar) = &self.bar {
            bar.set_prefix(format!(" in, {written} out"));
        }
        self.set_position(read);
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
                self.total.show(),
                format_rate(rate, "fps"),
            ),
            Unit::Bytes => (
                format!("{:.1} MB", self.pos as f64 / 1e6),
                self.total
                    .count()
                    .map(|t| format!("{:.1} MB", t as f64 / 1e6)),
                format!("{:.1} MB/s", rate / 1e6),
            ),
        };
        let pos = match self.written {
            Some(w) => format!(
                "{pos}{} in, {w} out",
                total.map(|t| format!("/{t}")).unwrap_or_default()
            ),
            None => format!(
                "{pos}{}",
                total.map(|t| format!("/{t}")).unwrap_or_default()
            ),
        };
        match self.total.count() {
            Some(tn) if rate > 0.0 && tn > self.pos => {
                let eta = (tn - self.pos) as f64 / rate;
                format!("{}: {pos}, {rate_s}, ETA {}", self.label, format_secs(eta))
            }
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

/// `1 frame`, `2 frames`.
pub fn frames(n: u64) -> String {
    if n == 1 {
        "1 frame".to_string()
    } else {
        format!("{n} frames")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_rounded_and_counts_agree() {
        assert_eq!(format_rate(0.37312, "fps"), "0.37 fps");
        assert_eq!(format_rate(2.4567, "fps"), "2.5 fps");
        assert_eq!(format_rate(22.2, "fps"), "22 fps");
        assert_eq!(format_rate(f64::NAN, "fps"), "0.00 fps");
        assert_eq!(frames(1), "1 frame");
        assert_eq!(frames(0), "0 frames");
        assert_eq!(frames(21), "21 frames");
    }

    #[test]
    fn plain_lines_count_frames_read_and_written() {
        let mut p = Progress::frames_in_out("upscaling", Total::Estimated(48), true);
        p.pos = 30;
        p.written = Some(21);
        let line = p.line();
        assert!(line.starts_with("upscaling: 30/~48 in, 21 out, "), "{line}");
        assert!(line.contains("ETA"), "{line}");
        let mut p = Progress::frames("bench", None, true);
        p.pos = 3;
        assert!(p.line().starts_with("bench: 3, "), "{}", p.line());
    }
}
