//! The `tessera` command's log: every line says which rank and host wrote
//! it, `--log-dir DIR` adds one file per process, and a worker rank's first
//! error also goes to the driver (see `tessera::runtime::observe::log`).
//!
//! ```text
//! r0@node12 2025-11-23T10:00:00.123Z  WARN ...
//! ```
//!
//! Progress lines (`tessera::progress`, INFO) are on unless the filter
//! given names them.

use std::fmt;
use std::fs::File;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use tessera::runtime::observe::log as rank_log;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{DefaultFields, Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The default format behind a `r{rank}@{host}` prefix.
struct RankPrefix {
    host: String,
    inner: Format<Full>,
}

impl<S, N> FormatEvent<S, N> for RankPrefix
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        write!(writer, "r{}@{} ", rank_log::rank(), self.host)?;
        self.inner.format_event(ctx, writer, event)
    }
}

/// Sends the first ERROR event of a worker rank to the scheduler.
struct ForwardErrors;

impl<S: Subscriber> Layer<S> for ForwardErrors {
    fn on_event(&self, event: &Event<'_>, _: LayerContext<'_, S>) {
        if *event.metadata().level() == Level::ERROR {
            let mut line = Line::default();
            event.record(&mut line);
            rank_log::forward_error(&line.0);
        }
    }
}

/// An event as one line: the message, then `name=value` for the other fields.
#[derive(Default)]
struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        use fmt::Write;
        if field.name() == "message" {
            let rest = std::mem::take(&mut self.0);
            let _ = write!(self.0, "{value:?}{}{rest}", if rest.is_empty() { "" } else { " " });
        } else {
            let _ = write!(self.0, "{}{}={value:?}", if self.0.is_empty() { "" } else { " " }, field.name());
        }
    }
}

/// A filter from `--log`, else `RUST_LOG`, else `default`; progress lines
/// stay on unless the filter mentions them.
fn filter(level: Option<&str>, default: &str) -> EnvFilter {
    let given = level.map(str::to_owned).or_else(|| std::env::var("RUST_LOG").ok()).filter(|s| !s.is_empty());
    let mut spec = given.clone().unwrap_or_else(|| default.to_owned());
    if !spec.contains("progress") {
        spec.push_str(",tessera::progress=info");
    }
    EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        eprintln!("tessera: warning: bad log filter `{}` ({e}); using warn", given.unwrap_or_default());
        EnvFilter::new("warn,tessera::progress=info")
    })
}

/// This process's file in `dir`: `rank-R.log` under a launcher, else
/// `HOST-PID.log` (an elastic worker learns its rank only when it joins).
fn log_file(dir: &Path) -> PathBuf {
    let name = match tessera::runtime::host::launcher::rank() {
        Some(r) => format!("rank-{r}.log"),
        None => format!("{}-{}.log", tessera::runtime::host::sys::hostname(), std::process::id()),
    };
    dir.join(name)
}

/// Installs the subscriber. `default`: the stderr filter when neither
/// `--log` nor `RUST_LOG` says; files get at least INFO.
pub fn init(level: Option<&str>, default: &str, log_dir: Option<&Path>) -> anyhow::Result<()> {
    let host = tessera::runtime::host::sys::hostname();
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .event_format(RankPrefix { host: host.clone(), inner: Format::default().with_target(false) })
        .fmt_fields(DefaultFields::new())
        .with_filter(filter(level, default));
    let file = match log_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("--log-dir {}", dir.display()))?;
            let path = log_file(dir);
            let f = File::options()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("--log-dir: cannot open {}", path.display()))?;
            let layer = tracing_subscriber::fmt::layer()
                .with_writer(Mutex::new(f))
                .with_ansi(false)
                .event_format(RankPrefix { host, inner: Format::default().with_target(true) })
                .with_filter(filter(level, "info"));
            Some(layer)
        }
        None => None,
    };
    tracing_subscriber::registry().with(stderr).with(file).with(ForwardErrors).init();
    Ok(())
}
