//! Logging in WAL-E's line format (`wal_e/log_help.py`), on `tracing`.
//!
//! ```text
//! wal_e.worker.upload INFO     MSG: completed archiving to a file
//!         DETAIL: Archiving to "file://…" complete at 2489.73KiB/s.
//!         STRUCTURED: time=2026-11-23T19:48:49.520613-00 pid=8689 action=push-wal …
//! ```
//!
//! Events carry the message plus optional `detail` and `hint` fields; every
//! other field goes on the STRUCTURED line, sorted. A `critical = true` field
//! renders the level as CRITICAL. Only events of this crate are logged, to
//! stderr and/or syslog (`WALE_LOG_DESTINATION`, `WALE_SYSLOG_FACILITY`);
//! stdout is left to command output.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};

use crate::config::Env;

/// Where log records go and how much is logged.
#[derive(Debug, Clone)]
pub struct LogSettings {
    pub max_level: Level,
    pub stderr: bool,
    pub syslog: Option<syslog::Facility>,
    /// Problems with the settings themselves, reported once logging is up.
    pub complaints: Vec<String>,
}

impl LogSettings {
    pub fn from_env(env: &dyn Env, terse: bool) -> LogSettings {
        let mut complaints = Vec::new();
        let destinations = env
            .var("WALE_LOG_DESTINATION")
            .unwrap_or_else(|| "stderr,syslog".to_string());
        let mut stderr = false;
        let mut want_syslog = false;
        for dest in destinations
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
        {
            match dest.to_ascii_lowercase().as_str() {
                "stderr" => stderr = true,
                "syslog" => want_syslog = true,
                other => complaints.push(format!(
                    "unknown log destination {other:?} in WALE_LOG_DESTINATION; use stderr and/or syslog"
                )),
            }
        }
        let facility = env
            .var("WALE_SYSLOG_FACILITY")
            .unwrap_or_else(|| "user".into());
        let parsed = parse_facility(&facility).unwrap_or_else(|| {
            complaints.push(format!(
                "invalid WALE_SYSLOG_FACILITY {facility:?}; using \"user\""
            ));
            syslog::Facility::LOG_USER
        });
        LogSettings {
            max_level: if terse { Level::WARN } else { Level::INFO },
            stderr,
            syslog: want_syslog.then_some(parsed),
            complaints,
        }
    }
}

/// Python's `SysLogHandler.facility_names`, case-insensitively.
fn parse_facility(name: &str) -> Option<syslog::Facility> {
    use syslog::Facility::*;
    Some(match name.to_ascii_lowercase().as_str() {
        "kern" => LOG_KERN,
        "user" => LOG_USER,
        "mail" => LOG_MAIL,
        "daemon" => LOG_DAEMON,
        "auth" | "security" => LOG_AUTH,
        "syslog" => LOG_SYSLOG,
        "lpr" => LOG_LPR,
        "news" => LOG_NEWS,
        "uucp" => LOG_UUCP,
        "cron" => LOG_CRON,
        "authpriv" => LOG_AUTHPRIV,
        "ftp" => LOG_FTP,
        "local0" => LOG_LOCAL0,
        "local1" => LOG_LOCAL1,
        "local2" => LOG_LOCAL2,
        "local3" => LOG_LOCAL3,
        "local4" => LOG_LOCAL4,
        "local5" => LOG_LOCAL5,
        "local6" => LOG_LOCAL6,
        "local7" => LOG_LOCAL7,
        _ => return None,
    })
}

/// The parts of one log record.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Record {
    pub msg: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    pub critical: bool,
    pub structured: Vec<(String, String)>,
}

impl Visit for Record {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field.name(), value.to_string());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "critical" {
            self.critical = value;
        } else {
            self.put(field.name(), value.to_string());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field.name(), format!("{value:?}"));
    }
}

impl Record {
    fn put(&mut self, name: &str, value: String) {
        match name {
            "message" => self.msg = value,
            "detail" => self.detail = Some(value),
            "hint" => self.hint = Some(value),
            other => self.structured.push((other.to_string(), value)),
        }
    }
}

/// Python's level names.
pub fn level_name(level: Level, critical: bool) -> &'static str {
    if critical {
        return "CRITICAL";
    }
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

/// WAL-E's `fmt_logline`: MSG, DETAIL, HINT, then STRUCTURED with the time,
/// the pid and the sorted `k=v` pairs.
pub fn format_body(record: &Record, now: DateTime<Utc>, pid: u32) -> String {
    let mut out = format!("MSG: {}", record.msg);
    if let Some(detail) = &record.detail {
        let _ = write!(out, "\nDETAIL: {detail}");
    }
    if let Some(hint) = &record.hint {
        let _ = write!(out, "\nHINT: {hint}");
    }
    let mut pairs: Vec<String> = record
        .structured
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    pairs.sort();
    let _ = write!(
        out,
        "\nSTRUCTURED: time={}-00 pid={pid}",
        now.format("%Y-%m-%dT%H:%M:%S%.6f")
    );
    for pair in pairs {
        out.push(' ');
        out.push_str(&pair);
    }
    out
}

/// The handler format `%(name)-12s %(levelname)-8s %(message)s`, with every
/// embedded newline followed by 8 spaces.
pub fn format_line(logger: &str, level: &str, body: &str) -> String {
    format!("{logger:<12} {level:<8} {body}").replace('\n', "\n        ")
}

/// `wal_e::storage::retry` becomes `wal_e.storage.retry`, like Python logger names.
pub fn logger_name(target: &str) -> String {
    target.replace("::", ".")
}

type SyslogWriter = syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>;

struct WalELayer {
    max_level: Level,
    stderr: bool,
    syslog: Option<Mutex<SyslogWriter>>,
}

impl<S: Subscriber> Layer<S> for WalELayer {
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        *metadata.level() <= self.max_level && metadata.target().starts_with("wal_e")
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut record = Record::default();
        event.record(&mut record);
        let level = *event.metadata().level();
        let body = format_body(&record, Utc::now(), std::process::id());
        let line = format_line(
            &logger_name(event.metadata().target()),
            level_name(level, record.critical),
            &body,
        );
        if self.stderr {
            // One write per record so concurrent processes do not interleave lines.
            let _ = std::io::stderr()
                .lock()
                .write_all(format!("{line}\n").as_bytes());
        }
        if let Some(writer) = &self.syslog
            && let Ok(mut writer) = writer.lock()
        {
            let _ = match (level, record.critical) {
                (_, true) => writer.crit(&line),
                (Level::ERROR, _) => writer.err(&line),
                (Level::WARN, _) => writer.warning(&line),
                (Level::INFO, _) => writer.info(&line),
                _ => writer.debug(&line),
            };
        }
    }
}

/// Installs the global subscriber. Syslog is best effort: without a syslog
/// daemon it is skipped (with a warning only when it was asked for explicitly).
pub fn init(settings: &LogSettings, syslog_explicit: bool) {
    let syslog = settings.syslog.and_then(|facility| {
        let formatter = syslog::Formatter3164 {
            facility,
            hostname: None,
            process: "wal-e".into(),
            pid: std::process::id(),
        };
        match syslog::unix(formatter) {
            Ok(writer) => Some(Mutex::new(writer)),
            Err(e) => {
                if syslog_explicit {
                    let _ = writeln!(std::io::stderr(), "wal-e: cannot log to syslog: {e}");
                }
                None
            }
        }
    });
    let layer = WalELayer {
        max_level: settings.max_level,
        stderr: settings.stderr,
        syslog,
    };
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer));
    for complaint in &settings.complaints {
        tracing::warn!(target: "wal_e.main", "{complaint}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::collections::HashMap;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 19, 48, 49).unwrap()
            + chrono::Duration::microseconds(520_613)
    }

    #[test]
    fn golden_wal_e_push_line() {
        // The real WAL-E line from the spec (§8.5), byte for byte.
        let record = Record {
            msg: "completed archiving to a file".into(),
            detail: Some("Archiving to \"file://localhost/backups/db1/wal_005/000000010000000000000002.lzo\" complete at 2489.73KiB/s.".into()),
            hint: None,
            critical: false,
            structured: vec![
                ("state".into(), "complete".into()),
                ("seg".into(), "000000010000000000000002".into()),
                ("rate".into(), "2489.73".into()),
                ("prefix".into(), "backups/db1/".into()),
                ("key".into(), "file://localhost/backups/db1/wal_005/000000010000000000000002.lzo".into()),
                ("action".into(), "push-wal".into()),
            ],
        };
        let line = format_line(
            "wal_e.worker.upload",
            "INFO",
            &format_body(&record, at(), 8689),
        );
        assert_eq!(
            line,
            "wal_e.worker.upload INFO     MSG: completed archiving to a file\n        DETAIL: Archiving to \"file://localhost/backups/db1/wal_005/000000010000000000000002.lzo\" complete at 2489.73KiB/s.\n        STRUCTURED: time=2026-11-23T19:48:49.520613-00 pid=8689 action=push-wal key=file://localhost/backups/db1/wal_005/000000010000000000000002.lzo prefix=backups/db1/ rate=2489.73 seg=000000010000000000000002 state=complete"
        );
    }

    #[test]
    fn golden_error_with_hint_and_short_logger_name_padding() {
        let record = Record {
            msg: "no storage prefix defined".into(),
            detail: Some("d".into()),
            hint: Some("h".into()),
            ..Default::default()
        };
        let line = format_line(
            "wal_e.main",
            level_name(Level::ERROR, false),
            &format_body(&record, at(), 1),
        );
        assert_eq!(
            line,
            "wal_e.main   ERROR    MSG: no storage prefix defined\n        DETAIL: d\n        HINT: h\n        STRUCTURED: time=2026-11-23T19:48:49.520613-00 pid=1"
        );
        assert_eq!(level_name(Level::WARN, false), "WARNING");
        assert_eq!(level_name(Level::ERROR, true), "CRITICAL");
        assert_eq!(logger_name("wal_e::storage::retry"), "wal_e.storage.retry");
    }

    #[test]
    fn destinations_terse_and_facility() {
        let env: HashMap<String, String> =
            [("WALE_LOG_DESTINATION".to_string(), "stderr".to_string())].into();
        let s = LogSettings::from_env(&env, true);
        assert!(s.stderr && s.syslog.is_none() && s.max_level == Level::WARN);
        let env: HashMap<String, String> = HashMap::new();
        let s = LogSettings::from_env(&env, false);
        assert!(s.stderr && matches!(s.syslog, Some(syslog::Facility::LOG_USER)));
        let env: HashMap<String, String> = [
            ("WALE_LOG_DESTINATION".to_string(), "syslog".to_string()),
            ("WALE_SYSLOG_FACILITY".to_string(), "LOCAL3".to_string()),
        ]
        .into();
        let s = LogSettings::from_env(&env, false);
        assert!(!s.stderr && matches!(s.syslog, Some(syslog::Facility::LOG_LOCAL3)));
        let env: HashMap<String, String> =
            [("WALE_SYSLOG_FACILITY".to_string(), "nonsense".to_string())].into();
        let s = LogSettings::from_env(&env, false);
        assert!(matches!(s.syslog, Some(syslog::Facility::LOG_USER)));
        assert_eq!(s.complaints.len(), 1);
    }
}
