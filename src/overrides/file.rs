//! Reading the overrides file defensively: it may be a symlink to anything.
//! Only a regular file is read (a FIFO or a device would block or never
//! end), never more than `limits.max_overrides_bytes`, and without blocking
//! an async worker (callers run this on a blocking thread).

use std::{io::Read, path::Path};

/// Why the file could not be read. Messages name no path and quote nothing
/// of the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("the file is not a regular file")]
    NotRegular,
    #[error("the file is {size} bytes, over the limit of {max} (limits.max_overrides_bytes)")]
    TooLarge { size: u64, max: u64 },
    #[error("cannot read the file: {0}")]
    Io(std::io::ErrorKind),
}

/// The file's bytes, or `None` when it does not exist.
pub fn read(path: &Path, max: u64) -> Result<Option<Vec<u8>>, ReadError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ReadError::Io(e.kind())),
    };
    if !meta.is_file() {
        return Err(ReadError::NotRegular);
    }
    if meta.len() > max {
        return Err(ReadError::TooLarge {
            size: meta.len(),
            max,
        });
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(target_os = "linux")]
    {
        // O_NONBLOCK: if the path was swapped for a FIFO since the check
        // above, opening it must not wait for a writer.
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(0o4000);
    }
    let file = match options.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ReadError::Io(e.kind())),
    };
    let meta = file.metadata().map_err(|e| ReadError::Io(e.kind()))?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular);
    }
    let mut bytes = Vec::with_capacity(meta.len().min(max) as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ReadError::Io(e.kind()))?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge {
            size: bytes.len() as u64,
            max,
        });
    }
    Ok(Some(bytes))
}

/// Flow collections (`[`, `{`) nested deeper than this are refused before
/// parsing: the YAML scanner's cost grows with the square of the depth.
pub const MAX_NESTING: usize = 64;

/// Finds flow nesting deeper than [`MAX_NESTING`] and aliases (`*name`),
/// outside quoted scalars and comments; the error names the line. Aliases
/// are refused because each one replays its anchored node in full: a small
/// file that reuses a mapping thousands of times expands to gigabytes. The
/// overrides format never needs them.
pub fn check_nesting(text: &str) -> Result<(), String> {
    // Where a node may start: only there does a quote open a quoted scalar
    // (`o'brien` is a plain scalar with an apostrophe in it) or a `*` an
    // alias (`a*b` is a plain scalar; `{"k":*a}` is an alias).
    let starts_node =
        |prev: char| prev.is_whitespace() || matches!(prev, '[' | '{' | ',' | ':' | '?');
    let mut depth = 0usize;
    let mut line = 1usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut comment = false;
    let mut prev = '\n';
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\n' {
            line += 1;
            comment = false;
        } else if comment {
        } else if let Some(q) = quote {
            match (q, c) {
                ('"', _) if escaped => escaped = false,
                ('"', '\\') => escaped = true,
                ('"', '"') => quote = None,
                // `''` is an apostrophe inside a single-quoted scalar.
                ('\'', '\'') => {
                    if chars.peek() == Some(&'\'') {
                        chars.next();
                    } else {
                        quote = None;
                    }
                }
                _ => {}
            }
        } else {
            match c {
                '#' if prev.is_whitespace() => comment = true,
                '"' | '\'' if starts_node(prev) => quote = Some(c),
                '[' | '{' => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Err(format!(
                            "line {line}: collections nested deeper than {MAX_NESTING}"
                        ));
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                '*' if starts_node(prev) => {
                    return Err(format!(
                        "line {line}: YAML aliases (*name) are not allowed in the overrides file"
                    ));
                }
                _ => {}
            }
        }
        prev = c;
    }
    Ok(())
}

/// A YAML error without the file's own words: values the parser quotes back
/// (`unknown field `x``, `invalid type: string "..."`) are replaced by `…`
/// unless they are words of the overrides format itself. The place (key
/// path, line, column) stays. A file that is not overrides at all (a secret
/// behind a symlink) must not show up in `GET /admin/overrides` or the log.
pub fn sanitize(message: &str) -> String {
    const WORDS: &[&str] = &[
        "active_strategy",
        "nodes",
        "pins",
        "user_regions",
        "region",
        "weight",
        "state",
        "external",
        "intranet",
        "labels",
        "tcp_addr",
        "ws_addr",
        "wss_addr",
        "active",
        "draining",
        "disabled",
    ];
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(['`', '"']) {
        let q = rest[start..].chars().next().unwrap_or('"');
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find(q) {
            Some(end) => {
                let inner = &after[..end];
                out.push(q);
                out.push_str(if WORDS.contains(&inner) { inner } else { "…" });
                out.push(q);
                rest = &after[end + 1..];
            }
            None => {
                out.push('…');
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("o.yaml");
        assert_eq!(read(&f, 10), Ok(None));
        std::fs::write(&f, "pins: {}\n").unwrap();
        assert_eq!(read(&f, 100).unwrap().unwrap(), b"pins: {}\n");
        assert_eq!(read(&f, 4), Err(ReadError::TooLarge { size: 9, max: 4 }));
        assert_eq!(read(dir.path(), 100), Err(ReadError::NotRegular));
        #[cfg(unix)]
        {
            let fifo = dir.path().join("fifo");
            let ok = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                assert_eq!(read(&fifo, 100), Err(ReadError::NotRegular));
            }
        }
    }

    #[test]
    fn aliases_are_refused_before_parsing() {
        let bomb = "a: &a {x: 1, y: 2}\nb: [*a, *a]\n";
        assert!(check_nesting(bomb)
            .unwrap_err()
            .starts_with("line 2: YAML aliases"));
        assert!(check_nesting("pins:\n  u1: *gw\n").is_err());
        assert!(check_nesting("*x: 1\n").is_err());
        assert!(check_nesting("nodes: {\"gw-1\": {\"labels\":*a}}\n").is_err());
        assert!(check_nesting("a: {'k':*a}\n").is_err());
        // An apostrophe or an escaped quote does not hide what follows.
        assert!(check_nesting("pins:\n  o'brien: eu\n  x: *a\n").is_err());
        assert!(check_nesting("a: \"x\\\" y\"\nb: *a\n").is_err());
        assert!(check_nesting("a: 'it''s'\nb: *a\n").is_err());
        let deep = format!("a: o'b\nb: {}\n", "[".repeat(100));
        assert!(check_nesting(&deep).is_err());
        // A star inside a word, quoted or in a comment is no alias.
        assert!(check_nesting("pins:\n  a*b: gw-1\n  \"*c\": gw-2 # *d\n").is_ok());
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        assert!(check_nesting("pins: {a: b}\nx: [[1], {c: [d]}]\n").is_ok());
        let deep = format!("pins: {}{}\n", "[".repeat(100), "]".repeat(100));
        assert!(check_nesting(&deep).unwrap_err().starts_with("line 1:"));
        // Brackets in quotes and comments do not count.
        let quoted = format!("a: \"{}\" # {}\n", "[".repeat(100), "{".repeat(100));
        assert!(check_nesting(&quoted).is_ok());
    }

    #[test]
    fn parse_errors_keep_the_place_and_drop_the_content() {
        let msg = "nodes.gw-1: unknown field `root:*:20228:0`, expected one of `region`, `weight` at line 3 column 5";
        assert_eq!(
            sanitize(msg),
            "nodes.gw-1: unknown field `…`, expected one of `region`, `weight` at line 3 column 5"
        );
        assert_eq!(
            sanitize("invalid type: string \"-----BEGIN KEY-----\", expected a map"),
            "invalid type: string \"…\", expected a map"
        );
    }
}
