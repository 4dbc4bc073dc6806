//! Logging for every binary: one `tracing` subscriber filtered by `BOOTSEER_LOG`, `log` records
//! (fuser logs through `log`) bridged into it, and a panic hook that logs before unwinding.

use std::sync::Once;

use tracing_subscriber::EnvFilter;

/// The environment variable that holds the log filter (`info`, `bootseer_common=debug`, …).
pub const LOG_ENV: &str = "BOOTSEER_LOG";

/// Installs logging once per process; later calls do nothing. Logs go to stderr.
pub fn init(default_filter: &str) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter =
            EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new(default_filter));
        let _ = tracing_log::LogTracer::init();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            // Colours only on a terminal: a daemon's log file or journald gets plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(true)
            .try_init();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            tracing::error!(panic = %info, "panic");
            previous(info);
        }));
    });
}
