//! Progress reporting as a trait, so the library never assumes a terminal:
//! commands report bytes done; only the binary decides whether a bar is drawn.

use std::io::IsTerminal;
use std::time::Duration;

/// Receives the progress of a long transfer (backup-push, backup-fetch).
pub trait Progress: Send + Sync {
    /// How many bytes the whole operation will handle, once known.
    fn set_total(&self, bytes: u64);
    /// `bytes` more are done.
    fn advance(&self, bytes: u64);
    fn finish(&self);
}

/// Reports nothing: cron, archive_command, `--terse`, tests.
pub struct Silent;

impl Progress for Silent {
    fn set_total(&self, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

/// A bar on stderr with bytes done of bytes planned, rate and ETA.
pub struct Bar(indicatif::ProgressBar);

impl Bar {
    pub fn new(what: &str) -> Bar {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(0),
            indicatif::ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(250));
        Bar(bar)
    }
}

impl Progress for Bar {
    fn set_total(&self, bytes: u64) {
        self.0.set_length(bytes);
        // Draw now: short transfers would otherwise finish before the first tick.
        self.0.force_draw();
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// A bar when a person is watching (stderr is a terminal and not `--terse`),
/// nothing otherwise.
pub fn for_terminal(what: &str, terse: bool) -> Box<dyn Progress> {
    if !terse && std::io::stderr().is_terminal() {
        Box::new(Bar::new(what))
    } else {
        Box::new(Silent)
    }
}
