//! Progress of the long commands (create, extract, verify, commit, bench) on standard error: a
//! bar on a terminal, JSON lines for wrappers (`--progress=json`), or nothing.

use std::io::{IsTerminal, Read, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};

/// The `-h` line of `--progress`.
const PROGRESS_SHORT_HELP: &str =
    "How to show progress on standard error (--help: the JSON lines) [default: auto, none with -q]";

/// The `--help` text of `--progress`, with the JSON line format that wrappers parse.
const PROGRESS_HELP: &str = "\
How to show progress on standard error: auto (a bar when standard error is a terminal, \
nothing otherwise), bar, json or none [default: auto, none with -q]

json writes one JSON object per line, at most 4 a second plus a first and a last one:
  {\"command\":\"create\",\"phase\":\"compress\",\"unit\":\"bytes\",\"done\":false,
   \"position\":1048576,\"total\":4194304,\"rate\":52428800,\"eta_seconds\":0.1,
   \"elapsed_seconds\":0.02}
position counts units (bytes; combinations for bench) and never goes down; total is null when \
unknown (standard input without --size); rate is units a second since the start; eta_seconds is \
null while unknown. The last line of a command that succeeds has \"done\":true and, when total \
is known, position equal to total. Progress lines are one-line objects with a \"done\" field; \
warnings, errors and summaries are not (they stay plain text, but for create --json's summary \
when the image goes to standard output, which is indented JSON).";

/// How progress is shown (`--progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// A bar when standard error is a terminal, nothing otherwise.
    Auto,
    /// A bar, drawn only when standard error is a terminal.
    Bar,
    /// One JSON object per line.
    Json,
    /// Nothing.
    None,
}

/// The `--progress` option of the long commands.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ProgressArg {
    #[arg(long, value_name = "HOW", value_enum)]
    #[arg(help = PROGRESS_SHORT_HELP, long_help = PROGRESS_HELP)]
    progress: Option<ProgressMode>,
}

impl ProgressArg {
    /// The mode in force: the one given, else none with `-q` and auto without.
    pub fn mode(&self, quiet: bool) -> ProgressMode {
        match self.progress {
            Some(mode) => mode,
            None if quiet => ProgressMode::None,
            None => ProgressMode::Auto,
        }
    }
}

/// What a progress position counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Bytes of data.
    Bytes,
    /// Benchmark combinations (block size x codec).
    Combinations,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Bytes => "bytes",
            Unit::Combinations => "combinations",
        }
    }
}

/// The progress of one command: a bar, JSON lines or nothing. Shared by reference between the
/// threads of the command.
pub struct Progress {
    shown: Shown,
}

enum Shown {
    Bar(ProgressBar),
    Json(Mutex<JsonLines>),
    Nothing,
}

impl Progress {
    /// Progress of `command` counting `unit`s up to `total` (if known), starting in `phase`.
    pub fn new(
        mode: ProgressMode,
        command: &'static str,
        phase: &'static str,
        unit: Unit,
        total: Option<u64>,
    ) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let shown = match mode {
            ProgressMode::Auto | ProgressMode::Bar if terminal => {
                Shown::Bar(bar(command, unit, total))
            }
            ProgressMode::Json => {
                let lines = JsonLines::new(command, phase, unit, total, Instant::now());
                emit(&lines.line(lines.start, false));
                Shown::Json(Mutex::new(lines))
            }
            _ => Shown::Nothing,
        };
        Progress { shown }
    }

    /// Sets the position to `position` units (never lower than it was).
    pub fn set_position(&self, position: u64) {
        match &self.shown {
            Shown::Bar(bar) => bar.set_position(position),
            Shown::Json(lines) => lines_do(lines, |l| l.advance_to(position, Instant::now())),
            Shown::Nothing => {}
        }
    }

    /// Adds `units` to the position.
    pub fn inc(&self, units: u64) {
        match &self.shown {
            Shown::Bar(bar) => bar.inc(units),
            Shown::Json(lines) => lines_do(lines, |l| {
                l.advance_to(l.position.saturating_add(units), Instant::now())
            }),
            Shown::Nothing => {}
        }
    }

    /// The phase named in JSON lines from now on (a bar shows messages instead).
    pub fn set_phase(&self, phase: &'static str) {
        if let Shown::Json(lines) = &self.shown {
            lines_do(lines, |l| {
                l.phase = phase;
                None
            });
        }
    }

    /// The text beside the bar (JSON lines carry no free text).
    pub fn set_message(&self, message: impl Into<String>) {
        if let Shown::Bar(bar) = &self.shown {
            bar.set_message(message.into());
        }
    }

    /// Runs `f` with the bar hidden, so lines it prints to the terminal do not tear it.
    pub fn suspend<T>(&self, f: impl FnOnce() -> T) -> T {
        match &self.shown {
            Shown::Bar(bar) => bar.suspend(f),
            _ => f(),
        }
    }

    /// A line printed above the bar (nothing in the other modes).
    pub fn println(&self, line: impl AsRef<str>) {
        if let Shown::Bar(bar) = &self.shown {
            bar.println(line);
        }
    }

    /// `reader`, counting the bytes read from it as progress.
    pub fn wrap_read<R: Read>(&self, reader: R) -> CountingReader<'_, R> {
        CountingReader {
            inner: reader,
            progress: self,
        }
    }

    /// The work is done: clears the bar, or writes the last JSON line (`"done":true`).
    pub fn finish(&self) {
        match &self.shown {
            Shown::Bar(bar) => bar.finish_and_clear(),
            Shown::Json(lines) => lines_do(lines, |l| Some(l.line(Instant::now(), true))),
            Shown::Nothing => {}
        }
    }
}

impl Drop for Progress {
    /// A bar left by a command that failed is cleared; JSON lines then end without `done`.
    fn drop(&mut self) {
        if let Shown::Bar(bar) = &self.shown {
            bar.finish_and_clear();
        }
    }
}

/// A reader whose bytes count as progress ([`Progress::wrap_read`]).
pub struct CountingReader<'a, R> {
    inner: R,
    progress: &'a Progress,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
}

/// Runs `f` on the JSON state and writes the line it returns, if any.
fn lines_do(lines: &Mutex<JsonLines>, f: impl FnOnce(&mut JsonLines) -> Option<String>) {
    // A thread that panicked while holding the lock left a consistent state: keep going.
    let mut guard = lines
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(line) = f(&mut guard) {
        emit(&line);
    }
}

/// Writes one line to standard error. Progress is best effort: a closed stderr is ignored.
fn emit(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
    let _ = err.flush();
}

/// An indicatif bar for `unit`s, drawn on standard error.
fn bar(command: &'static str, unit: Unit, total: Option<u64>) -> ProgressBar {
    let bar = match total {
        Some(total) => ProgressBar::new(total),
        None => ProgressBar::new_spinner(),
    };
    let template = match (unit, total.is_some()) {
        (Unit::Bytes, true) => {
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}"
        }
        (Unit::Bytes, false) => "{msg} {spinner} {bytes} {binary_bytes_per_sec}",
        (Unit::Combinations, _) => "bench [{bar:24}] {pos}/{len} {elapsed_precise} {msg}",
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    if unit == Unit::Bytes {
        bar.set_message(command);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// The shortest time between two JSON lines (the first and the last are always written).
const JSON_INTERVAL: Duration = Duration::from_millis(250);

/// The state behind `--progress=json`: what the next line says and when the last was written.
#[derive(Debug)]
struct JsonLines {
    command: &'static str,
    phase: &'static str,
    unit: Unit,
    total: Option<u64>,
    position: u64,
    start: Instant,
    last: Instant,
}

impl JsonLines {
    fn new(
        command: &'static str,
        phase: &'static str,
        unit: Unit,
        total: Option<u64>,
        now: Instant,
    ) -> JsonLines {
        JsonLines {
            command,
            phase,
            unit,
            total,
            position: 0,
            start: now,
            last: now,
        }
    }

    /// Moves to `position` (if higher) and returns a line when the last is old enough.
    fn advance_to(&mut self, position: u64, now: Instant) -> Option<String> {
        self.position = self.position.max(position);
        if now.saturating_duration_since(self.last) < JSON_INTERVAL {
            return None;
        }
        self.last = now;
        Some(self.line(now, false))
    }

    /// The JSON object for `now`; `done` marks the last line.
    fn line(&self, now: Instant, done: bool) -> String {
        let elapsed = now.saturating_duration_since(self.start).as_secs_f64();
        let rate = (elapsed > 0.0).then(|| self.position as f64 / elapsed);
        let eta = match (self.total, rate) {
            _ if done => Some(0.0),
            (Some(total), Some(rate)) if rate > 0.0 => {
                Some(total.saturating_sub(self.position) as f64 / rate)
            }
            _ => None,
        };
        let line = JsonLine {
            command: self.command,
            phase: self.phase,
            unit: self.unit.name(),
            done,
            position: self.position,
            total: self.total,
            rate: rate.map_or(0, |r| r.round() as u64),
            eta_seconds: eta.map(tenths),
            elapsed_seconds: (elapsed * 1000.0).round() / 1000.0,
        };
        serde_json::to_string(&line).unwrap_or_default()
    }
}

/// One line of `--progress=json`, its fields in the documented order.
#[derive(serde::Serialize)]
struct JsonLine {
    command: &'static str,
    phase: &'static str,
    unit: &'static str,
    done: bool,
    position: u64,
    total: Option<u64>,
    rate: u64,
    eta_seconds: Option<f64>,
    elapsed_seconds: f64,
}

/// `seconds` rounded to a tenth.
fn tenths(seconds: f64) -> f64 {
    (seconds * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> serde_json::Value {
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn lines_are_rate_limited_and_the_position_only_grows() {
        let t0 = Instant::now();
        let mut lines = JsonLines::new("create", "compress", Unit::Bytes, Some(1000), t0);
        // Updates within the interval write nothing, however many there are.
        for i in 0..100 {
            assert_eq!(lines.advance_to(i, t0 + Duration::from_millis(i)), None);
        }
        let line = lines.advance_to(500, t0 + JSON_INTERVAL).unwrap();
        let v = parse(&line);
        assert_eq!(v["position"], 500);
        assert_eq!(v["done"], false);
        assert_eq!(v["rate"], 2000, "500 bytes in a quarter second");
        assert_eq!(v["eta_seconds"], 0.3, "500 bytes to go at 2000 a second");
        // A lower position (threads reporting out of order) does not move it back.
        assert_eq!(lines.advance_to(10, t0 + JSON_INTERVAL), None);
        let last = parse(&lines.line(t0 + 2 * JSON_INTERVAL, true));
        assert_eq!(last["position"], 500);
        assert_eq!(
            (last["done"].clone(), last["eta_seconds"].clone()),
            (true.into(), 0.0.into())
        );
    }

    #[test]
    fn unknown_totals_and_rates_are_null() {
        let t0 = Instant::now();
        let lines = JsonLines::new("create", "compress", Unit::Bytes, None, t0);
        let v = parse(&lines.line(t0, false));
        assert!(v["total"].is_null() && v["eta_seconds"].is_null(), "{v}");
        assert_eq!(
            (v["rate"].clone(), v["unit"].clone()),
            (0.into(), "bytes".into())
        );
        assert_eq!(
            (v["command"].clone(), v["phase"].clone()),
            ("create".into(), "compress".into())
        );
    }

    #[test]
    fn quiet_means_none_unless_a_mode_is_given() {
        let none = ProgressArg { progress: None };
        assert_eq!(none.mode(false), ProgressMode::Auto);
        assert_eq!(none.mode(true), ProgressMode::None);
        let json = ProgressArg {
            progress: Some(ProgressMode::Json),
        };
        assert_eq!(json.mode(true), ProgressMode::Json);
    }
}
