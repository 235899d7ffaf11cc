//! Progress bars for long jobs: shown on standard error when it is a terminal, silent otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a bar redraws.
const TICK: Duration = Duration::from_millis(100);

/// A byte counter that may or may not be drawn. Cheap to clone and to call from any thread.
#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar for `total` bytes (a spinner when the total is unknown), drawn only when
    /// standard error is a terminal.
    pub fn bytes(message: &str, total: Option<u64>) -> Progress {
        let bar = if std::io::stderr().is_terminal() {
            let bar = match total {
                Some(t) => ProgressBar::new(t).with_style(
                    ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                ),
                None => ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("{spinner} {msg} {bytes} {binary_bytes_per_sec}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                ),
            };
            bar.set_draw_target(ProgressDrawTarget::stderr());
            bar.enable_steady_tick(TICK);
            bar
        } else {
            ProgressBar::hidden()
        };
        bar.set_message(message.to_owned());
        Progress { bar }
    }

    /// A progress that draws nothing.
    pub fn hidden() -> Progress {
        Progress {
            bar: ProgressBar::hidden(),
        }
    }

    pub fn add(&self, n: u64) {
        self.bar.inc(n);
    }

    pub fn set_message(&self, m: &str) {
        self.bar.set_message(m.to_owned());
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
