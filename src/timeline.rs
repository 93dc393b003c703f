//! Timeline history: which timeline descends from which, and at what WAL
//! location it left its parent, from PostgreSQL's `<timeline>.history` files.
//!
//! A timeline history file lists every ancestor of its timeline, oldest
//! first, one per line: the ancestor's timeline id, the location where the
//! history switched away from it, and a free-text reason, separated by
//! white space (`1<TAB>0/3000158<TAB>no recovery target specified`). Timeline 1 has
//! no history file and no ancestors.

use std::collections::BTreeMap;

use crate::layout::{BackupName, SegmentName};
use crate::postgres::Lsn;

/// Where a timeline's history left one of its ancestors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch {
    pub parent: u32,
    pub at: Lsn,
}

/// Parses a history file's text (`readTimeLineHistory`): blank lines and
/// `#` comments are skipped; each other line must start with a timeline id
/// and a location.
pub fn parse_history(text: &str) -> Result<Vec<Switch>, String> {
    let mut switches = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let parent = fields
            .next()
            .and_then(|f| f.parse::<u32>().ok())
            .ok_or_else(|| format!("bad timeline id in line {line:?}"))?;
        let at = fields
            .next()
            .and_then(|f| f.parse::<Lsn>().ok())
            .ok_or_else(|| format!("bad switch location in line {line:?}"))?;
        switches.push(Switch { parent, at });
    }
    Ok(switches)
}

/// The histories known for an archive's timelines.
#[derive(Debug, Clone, Default)]
pub struct Timelines {
    histories: BTreeMap<u32, Vec<Switch>>,
}

impl Timelines {
    pub fn insert(&mut self, timeline: u32, switches: Vec<Switch>) {
        self.histories.insert(timeline, switches);
    }

    /// Where `timeline`'s history left `ancestor`: `Ok(Some(at))` if it
    /// descends from it (`Lsn(u64::MAX)` for the timeline itself, which it
    /// never left), `Ok(None)` if it does not, and `Err(timeline)` if that
    /// cannot be told because its history file is missing.
    pub fn departure(&self, timeline: u32, ancestor: u32) -> Result<Option<Lsn>, u32> {
        if timeline == ancestor {
            return Ok(Some(Lsn(u64::MAX)));
        }
        if timeline <= 1 {
            return Ok(None);
        }
        let history = self.histories.get(&timeline).ok_or(timeline)?;
        Ok(history.iter().find(|s| s.parent == ancestor).map(|s| s.at))
    }
}

/// Whether recovery from `backup` can follow the history into `timeline`:
/// it is the backup's own timeline, or descends from it by a switch at or
/// after the backup's start. `Err(timeline)` as for
/// [`Timelines::departure`].
pub fn reaches(
    timelines: &Timelines,
    backup: &BackupName,
    timeline: u32,
    segment_size: u64,
) -> Result<bool, u32> {
    let start = backup.start_segment;
    Ok(timelines
        .departure(timeline, start.timeline)?
        .is_some_and(|at| at >= start_lsn(backup, segment_size)))
}

/// The WAL location a backup starts at, from its name. WAL-E cut offsets to
/// 8 digits (segments of 128 MiB and more), which can only make this
/// earlier than the truth: a switch is then taken to be after the start,
/// which keeps more, never less.
fn start_lsn(backup: &BackupName, segment_size: u64) -> Lsn {
    let SegmentName { log, seg, .. } = backup.start_segment;
    let offset: u64 = backup.start_offset.parse().unwrap_or(0);
    Lsn((u64::from(log) << 32) + u64::from(seg) * segment_size + offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(name: &str) -> BackupName {
        BackupName::parse(name).unwrap()
    }

    #[test]
    fn history_files_parse_as_postgresql_writes_them() {
        let text = "1\t0/3000158\tno recovery target specified\n\n# comment\n2\t1/A0000000\tbefore 2026-01-01 00:00:00+00\n";
        assert_eq!(
            parse_history(text).unwrap(),
            vec![
                Switch {
                    parent: 1,
                    at: Lsn(0x300_0158)
                },
                Switch {
                    parent: 2,
                    at: Lsn(0x1_A000_0000)
                },
            ]
        );
        assert!(parse_history("one\t0/0\n").is_err());
        assert!(parse_history("1\tnowhere\n").is_err());
    }

    #[test]
    fn descendants_are_reached_only_when_they_left_after_the_start() {
        let mut timelines = Timelines::default();
        timelines.insert(2, parse_history("1\t0/5000100\tx").unwrap());
        timelines.insert(
            3,
            parse_history("1\t0/5000100\tx\n2\t0/9000000\ty").unwrap(),
        );
        let mib16 = 16 << 20;
        // Timeline 1 backup starting at 0/2000028: 2 and 3 left 1 after it.
        let early = backup("base_000000010000000000000002_00000040");
        assert_eq!(reaches(&timelines, &early, 1, mib16), Ok(true));
        assert_eq!(reaches(&timelines, &early, 2, mib16), Ok(true));
        assert_eq!(reaches(&timelines, &early, 3, mib16), Ok(true));
        // One starting at 0/6000000 on timeline 1: 2 left before it.
        let late = backup("base_000000010000000000000006_00000000");
        assert_eq!(reaches(&timelines, &late, 2, mib16), Ok(false));
        assert_eq!(reaches(&timelines, &late, 3, mib16), Ok(false));
        // The segment size decides within a log: 0/5000100 is after the
        // start of segment 5 of 16 MiB, before that of segment 5 of 64 MiB.
        let five = backup("base_000000010000000000000005_00000000");
        assert_eq!(reaches(&timelines, &five, 2, mib16), Ok(true));
        assert_eq!(reaches(&timelines, &five, 2, 64 << 20), Ok(false));
        // A backup on timeline 2 reaches 3, not 1.
        let two = backup("base_000000020000000000000006_00000000");
        assert_eq!(reaches(&timelines, &two, 3, mib16), Ok(true));
        assert_eq!(reaches(&timelines, &two, 1, mib16), Ok(false));
        // Timeline 4 has no history file: it cannot be placed.
        assert_eq!(reaches(&timelines, &early, 4, mib16), Err(4));
    }
}
