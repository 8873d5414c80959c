//! `alaska --check`: compiles every script in the scripts folder without
//! running any, and lists each problem with its file and line.

use std::path::Path;

use mlua::{chunk::ChunkMode, Lua};

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file (or folder) concerned.
    pub file: String,
    /// Lua's message, which carries the line number.
    pub message: String,
}

/// Compiles every `*.lua` directly in `dir`. Also flags file names that no
/// subject can select (they would never run).
pub fn check_scripts(dir: &Path) -> Vec<Problem> {
    let mut problems = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            return vec![Problem {
                file: dir.display().to_string(),
                message: format!("cannot read the scripts folder: {e}"),
            }]
        }
    };
    let lua = Lua::new();
    let mut paths: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "lua"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        problems.push(Problem {
            file: dir.display().to_string(),
            message: "the scripts folder has no <subject>.lua script: every request would fail"
                .into(),
        });
    }
    for path in paths {
        let file = path.display().to_string();
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if super::subject::script_path(dir, stem).is_err() {
            problems.push(Problem {
                file: file.clone(),
                message: "no subject can select this file (allowed: letters, digits, '_', '-', '.', no '..')".into(),
            });
        }
        let source = match std::fs::read(&path) {
            Ok(s) => s,
            Err(e) => {
                problems.push(Problem {
                    file,
                    message: e.to_string(),
                });
                continue;
            }
        };
        if let Err(e) = lua
            .load(&source[..])
            .set_name(format!("@{file}"))
            .set_mode(ChunkMode::Text)
            .into_function()
        {
            problems.push(Problem {
                file,
                message: e.to_string(),
            });
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_syntax_errors_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("good.lua"), "return 1").unwrap();
        std::fs::write(dir.path().join("bad.lua"), "local x = 1\nreturn (").unwrap();
        let p = check_scripts(dir.path());
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].file.ends_with("bad.lua"));
        assert!(p[0].message.contains(":2:"), "{}", p[0].message);
    }
}
