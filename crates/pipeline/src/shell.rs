//! Command lines as a shell would show them, and paths as the user would write them.

use std::path::Path;

/// Shell-style rendering of a command line (for logs and messages).
pub fn shell_line(program: &str, argv: &[String]) -> String {
    std::iter::once(program.to_string())
        .chain(argv.iter().map(|a| shell_quote(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn shell_quote(a: &str) -> String {
    let plain = !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

pub fn relative(path: &Path) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    match path.strip_prefix(&cwd) {
        Ok(r) if !r.as_os_str().is_empty() => r.display().to_string(),
        _ => path.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        let argv: Vec<String> = ["sub", "--lr", "0.1", "--input", "a b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(shell_line("x", &argv), "x sub --lr 0.1 --input 'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
