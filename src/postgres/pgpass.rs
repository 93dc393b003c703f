//! The libpq password file (`~/.pgpass` or `$PGPASSFILE`), read as libpq's
//! `passwordFromFile` does.
//!
//! Each line is `hostname:port:database:username:password`. A field that is
//! exactly `*` matches anything; `\` escapes the next character (so `\:` and
//! `\\` stand for `:` and `\`, and `\*` for a literal `*`). Lines starting
//! with `#` are comments. The first matching line wins. A file that is not a
//! regular file, or that group or others may access, is ignored with a
//! warning, exactly like libpq.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// What a password-file lookup is matched against.
#[derive(Debug, Clone, Copy)]
pub struct PassKey<'a> {
    pub host: &'a str,
    pub port: &'a str,
    pub database: &'a str,
    pub user: &'a str,
}

/// Why a password file was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skipped {
    /// The file does not exist (or cannot be stat'ed): silently ignored.
    Missing,
    /// Not a regular file.
    NotAFile,
    /// Group or others have some access: libpq refuses to use it.
    Insecure { mode: u32 },
    /// It exists but could not be read.
    Unreadable(String),
}

/// Looks `key` up in the password file at `path`.
///
/// `Ok(Some(password))` on a match, `Ok(None)` when no line matches, and
/// `Err(Skipped)` when the file is missing or must not be used.
pub fn lookup(path: &Path, key: PassKey<'_>) -> Result<Option<String>, Skipped> {
    let meta = fs::metadata(path).map_err(|_| Skipped::Missing)?;
    if !meta.is_file() {
        return Err(Skipped::NotAFile);
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(Skipped::Insecure {
            mode: mode & 0o7777,
        });
    }
    let text = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Skipped::Missing),
        Err(e) => return Err(Skipped::Unreadable(e.to_string())),
    };
    Ok(find_password(&String::from_utf8_lossy(&text), key))
}

/// The password of the first line of `text` matching `key`.
pub fn find_password(text: &str, key: PassKey<'_>) -> Option<String> {
    for line in text.split('\n') {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let rest = Some(line)
            .and_then(|t| match_field(t, key.host))
            .and_then(|t| match_field(t, key.port))
            .and_then(|t| match_field(t, key.database))
            .and_then(|t| match_field(t, key.user));
        if let Some(rest) = rest {
            return Some(unescape_password(rest));
        }
    }
    None
}

/// libpq's `pwdfMatchesString`: if the field at the start of `buf` matches
/// `token`, returns what follows the field's terminating `:`.
fn match_field<'a>(buf: &'a str, token: &str) -> Option<&'a str> {
    if let Some(rest) = buf.strip_prefix("*:") {
        return Some(rest);
    }
    let bytes = buf.as_bytes();
    let tok = token.as_bytes();
    let (mut i, mut t) = (0, 0);
    while i < bytes.len() {
        let mut escaped = false;
        if bytes[i] == b'\\' {
            i += 1;
            escaped = true;
            if i == bytes.len() {
                return None;
            }
        }
        if bytes[i] == b':' && !escaped && t == tok.len() {
            return Some(&buf[i + 1..]);
        }
        if t == tok.len() || bytes[i] != tok[t] {
            return None;
        }
        i += 1;
        t += 1;
    }
    None
}

/// The password field: up to the first unescaped `:` (or the end), with
/// backslash escapes removed.
fn unescape_password(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        match c {
            ':' => break,
            '\\' => match chars.next() {
                Some(next) => out.push(next),
                None => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(host: &'a str, port: &'a str, database: &'a str, user: &'a str) -> PassKey<'a> {
        PassKey {
            host,
            port,
            database,
            user,
        }
    }

    #[test]
    fn first_matching_line_wins() {
        let text = "# comment\n\
                    db1.example:5432:postgres:alice:first\n\
                    *:*:*:alice:second\n\
                    *:*:*:*:third\n";
        let k = key("db1.example", "5432", "postgres", "alice");
        assert_eq!(find_password(text, k).as_deref(), Some("first"));
        let k = key("db2.example", "5432", "postgres", "alice");
        assert_eq!(find_password(text, k).as_deref(), Some("second"));
        let k = key("db2.example", "5433", "postgres", "bob");
        assert_eq!(find_password(text, k).as_deref(), Some("third"));
    }

    #[test]
    fn fields_must_match_exactly() {
        let text = "localhost:5432:postgres:alice:pw\n";
        for k in [
            key("localhost", "54321", "postgres", "alice"),
            key("localhos", "5432", "postgres", "alice"),
            key("localhost", "5432", "postgres2", "alice"),
            key("localhost", "5432", "postgres", "alic"),
            key("", "5432", "postgres", "alice"),
        ] {
            assert_eq!(find_password(text, k), None, "{k:?}");
        }
    }

    #[test]
    fn star_is_a_wildcard_only_as_a_whole_field() {
        let text = "db*:5432:*:alice:pw\n";
        assert_eq!(find_password(text, key("db1", "5432", "x", "alice")), None);
        assert_eq!(
            find_password(text, key("db*", "5432", "x", "alice")).as_deref(),
            Some("pw")
        );
        let escaped = "\\*:5432:*:alice:lit\n*:5432:*:alice:wild\n";
        assert_eq!(
            find_password(escaped, key("*", "5432", "x", "alice")).as_deref(),
            Some("lit")
        );
        assert_eq!(
            find_password(escaped, key("h", "5432", "x", "alice")).as_deref(),
            Some("wild")
        );
    }

    #[test]
    fn escapes_in_fields_and_password() {
        let text = "/tmp/sock\\:dir:5432:db\\\\1:al\\:ice:p\\:a\\\\ss\\word:ignored\n";
        let k = key("/tmp/sock:dir", "5432", "db\\1", "al:ice");
        assert_eq!(find_password(text, k).as_deref(), Some("p:a\\ssword"));
    }

    #[test]
    fn crlf_comments_blank_lines_and_short_lines() {
        let text = "\r\n#*:*:*:*:commented\nshort:line\n*:*:*:alice:pw\r\n";
        assert_eq!(
            find_password(text, key("h", "1", "d", "alice")).as_deref(),
            Some("pw")
        );
        assert_eq!(find_password(text, key("h", "1", "d", "bob")), None);
    }

    #[test]
    fn empty_password_and_missing_password_field() {
        assert_eq!(
            find_password("*:*:*:alice:\n", key("h", "1", "d", "alice")).as_deref(),
            Some("")
        );
        // Four fields only: the user field has no terminating colon.
        assert_eq!(
            find_password("*:*:*:alice\n", key("h", "1", "d", "alice")),
            None
        );
    }

    #[test]
    fn file_permissions_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        fs::write(&path, "*:*:*:*:secret\n").unwrap();
        let k = key("h", "1", "d", "u");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(lookup(&path, k), Ok(Some("secret".to_string())));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(lookup(&path, k), Err(Skipped::Insecure { mode: 0o640 }));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o604)).unwrap();
        assert_eq!(lookup(&path, k), Err(Skipped::Insecure { mode: 0o604 }));
        assert_eq!(lookup(&dir.path().join("nope"), k), Err(Skipped::Missing));
        assert_eq!(lookup(dir.path(), k), Err(Skipped::NotAFile));
    }
}
