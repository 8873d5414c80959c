//! Which script a subject selects, and which subjects select none.
//!
//! The original built `<dir>/<subject>.lua` from whatever the request said,
//! so `../../etc/x` ran a file outside the services folder. Here only
//! subjects made of letters, digits, `_`, `-` and `.` select a script (no
//! `..`, no leading `.`, at most 255 bytes), and the resolved path must lie
//! inside the scripts directory even after following symbolic links.

use std::path::{Path, PathBuf};

/// Why a subject selects no script.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// Empty subject.
    #[error("empty subject selects no script")]
    Empty,
    /// A character outside `[A-Za-z0-9_.-]`.
    #[error("subject {0:?} has characters other than letters, digits, '_', '-' and '.'")]
    BadCharacter(String),
    /// `..` or a leading `.`.
    #[error("subject {0:?} contains '..' or starts with '.'")]
    Traversal(String),
    /// The script resolves outside the scripts directory.
    #[error("script for subject {0:?} resolves outside the scripts directory")]
    Escapes(String),
    /// No such script.
    #[error("no script {path} for subject {subject:?}")]
    Missing {
        /// The subject.
        subject: String,
        /// The path looked for.
        path: String,
    },
}

/// Checks `subject` and returns the script path inside `dir`.
pub fn script_path(dir: &Path, subject: &str) -> Result<PathBuf, SubjectError> {
    if subject.is_empty() {
        return Err(SubjectError::Empty);
    }
    if subject.len() > 255
        || !subject
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(SubjectError::BadCharacter(
            subject.escape_debug().to_string(),
        ));
    }
    if subject.contains("..") || subject.starts_with('.') {
        return Err(SubjectError::Traversal(subject.to_string()));
    }
    let path = dir.join(format!("{subject}.lua"));
    let missing = || SubjectError::Missing {
        subject: subject.to_string(),
        path: path.display().to_string(),
    };
    let real = path.canonicalize().map_err(|_| missing())?;
    let root = dir.canonicalize().map_err(|_| missing())?;
    if !real.starts_with(&root) {
        return Err(SubjectError::Escapes(subject.to_string()));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_subjects_select_scripts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("echo.lua"), "return 1").unwrap();
        std::fs::write(dir.path().join("a.b-c_1.lua"), "return 1").unwrap();
        assert!(script_path(dir.path(), "echo").is_ok());
        assert!(script_path(dir.path(), "a.b-c_1").is_ok());
        for bad in [
            "",
            "../x",
            "a/b",
            "a\0b",
            "..",
            ".hidden",
            "x..y",
            "/etc/passwd",
            "é",
        ] {
            assert!(script_path(dir.path(), bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            script_path(dir.path(), "nope"),
            Err(SubjectError::Missing { .. })
        ));
    }

    #[test]
    fn symlinks_out_of_the_folder_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("evil.lua"), "return 1").unwrap();
        std::os::unix::fs::symlink(outside.path().join("evil.lua"), dir.path().join("evil.lua"))
            .unwrap();
        assert_eq!(
            script_path(dir.path(), "evil"),
            Err(SubjectError::Escapes("evil".into()))
        );
    }
}
