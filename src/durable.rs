//! Making file system changes survive a crash.

use std::io;
use std::path::Path;

/// fsyncs a directory, so that entries created, renamed or removed in it are
/// on disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The directory containing `path`, `.` for a bare file name.
pub fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}
