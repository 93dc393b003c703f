//! `backup-list [QUERY] [--detail] [--json]`: the complete base backups.
//!
//! The default output is WAL-E's: Python's `csv` "excel-tab" dialect (tab
//! separated, `\r\n` line ends, minimal quoting with `"`), a header row that
//! is always printed, even when the query is then rejected, and one row per
//! backup in listing order with empty fields for what is unknown. `--detail`
//! reads each sentinel to fill the size and stop columns, on every backend
//! (WAL-E's file:// backend left them empty).
//!
//! `--json` prints one JSON object per backup per line (no header), with the
//! same fields; `last_modified` is RFC 3339 and unknown values are `null`.
//! Like the table, it reads sentinels only with `--detail`.

use std::io::{self, Write};

use serde::Serialize;

use super::Context;
use crate::catalog::{self, BackupInfo, BackupQuery};
use crate::cli::BackupListArgs;
use crate::error::{CmdResult, UserError};

/// The columns, in WAL-E's order (`BackupInfo._fields`).
pub const COLUMNS: [&str; 7] = [
    "name",
    "last_modified",
    "expanded_size_bytes",
    "wal_segment_backup_start",
    "wal_segment_offset_backup_start",
    "wal_segment_backup_stop",
    "wal_segment_offset_backup_stop",
];

/// One `--json` line.
#[derive(Debug, Serialize)]
struct JsonRow<'a> {
    name: String,
    last_modified: String,
    expanded_size_bytes: Option<u64>,
    wal_segment_backup_start: String,
    wal_segment_offset_backup_start: &'a str,
    wal_segment_backup_stop: Option<&'a str>,
    wal_segment_offset_backup_stop: Option<&'a str>,
}

pub async fn run(ctx: &Context, args: &BackupListArgs) -> CmdResult {
    let mut table = (!args.json).then(|| tsv_writer(io::stdout()));
    if let Some(w) = table.as_mut() {
        w.write_record(COLUMNS).map_err(write_failed)?;
        w.flush().map_err(write_failed)?;
    }
    let query = args.query.as_deref().map(BackupQuery::parse).transpose()?;

    let mut backups = catalog::list_backups(ctx).await?;
    if let Some(query) = &query {
        backups = query.select(&backups).cloned().into_iter().collect();
    }
    if args.detail {
        backups = catalog::load_details(ctx, backups).await?;
    }

    match table.as_mut() {
        Some(w) => {
            for backup in &backups {
                w.write_record(tsv_row(ctx, backup)).map_err(write_failed)?;
            }
            w.flush().map_err(write_failed)?;
        }
        None => {
            let mut out = io::stdout().lock();
            for backup in &backups {
                let mut line = serde_json::to_vec(&json_row(backup)).map_err(write_failed)?;
                line.push(b'\n');
                out.write_all(&line).map_err(write_failed)?;
            }
            out.flush().map_err(write_failed)?;
        }
    }
    Ok(())
}

/// Python's `csv.writer(dialect='excel-tab')`.
pub fn tsv_writer<W: Write>(w: W) -> csv::Writer<W> {
    csv::WriterBuilder::new()
        .delimiter(b'\t')
        .terminator(csv::Terminator::CRLF)
        .quote(b'"')
        .double_quote(true)
        .quote_style(csv::QuoteStyle::Necessary)
        .has_headers(false)
        .from_writer(w)
}

fn tsv_row(ctx: &Context, b: &BackupInfo) -> [String; 7] {
    let s = b.sentinel.as_ref();
    [
        b.name.to_string(),
        catalog::format_last_modified(ctx.settings.prefix.scheme, b.last_modified),
        s.map(|s| s.expanded_size_bytes.to_string())
            .unwrap_or_default(),
        b.name.start_segment.to_string(),
        b.name.start_offset.clone(),
        s.map(|s| s.wal_segment_backup_stop.clone())
            .unwrap_or_default(),
        s.map(|s| s.wal_segment_offset_backup_stop.clone())
            .unwrap_or_default(),
    ]
}

fn json_row(b: &BackupInfo) -> JsonRow<'_> {
    let s = b.sentinel.as_ref();
    JsonRow {
        name: b.name.to_string(),
        last_modified: catalog::rfc3339(b.last_modified),
        expanded_size_bytes: s.map(|s| s.expanded_size_bytes),
        wal_segment_backup_start: b.name.start_segment.to_string(),
        wal_segment_offset_backup_start: &b.name.start_offset,
        wal_segment_backup_stop: s.map(|s| s.wal_segment_backup_stop.as_str()),
        wal_segment_offset_backup_stop: s.map(|s| s.wal_segment_offset_backup_stop.as_str()),
    }
}

fn write_failed(e: impl std::fmt::Display) -> UserError {
    UserError::new("could not write the backup list")
        .detail(format!("Writing to standard output: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excel_tab_dialect_quotes_only_when_needed() {
        let mut w = tsv_writer(Vec::new());
        w.write_record(["a", "", "b c", "tab\there", "q\"uote", "line\nbreak"])
            .unwrap();
        let out = String::from_utf8(w.into_inner().unwrap()).unwrap();
        // What Python's csv.writer(dialect='excel-tab') writes for the same row.
        assert_eq!(
            out,
            "a\t\tb c\t\"tab\there\"\t\"q\"\"uote\"\t\"line\nbreak\"\r\n"
        );
    }
}
