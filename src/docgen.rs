//! Man pages and shell completions, generated from each binary's clap
//! definition so that they never drift from `--help`.
//!
//! Every binary parses its flags through [`parse`]. With the environment
//! variable [`GENERATE_ENV`] set to a folder, the binary writes instead
//! `<folder>/man/<name>.1` (clap_mangen) and
//! `<folder>/completions/{bash/<name>, zsh/_<name>, fish/<name>.fish}`
//! (clap_complete) and exits. `tools/package-deb.sh` does this for the
//! Debian package. A variable rather than a flag keeps the generator out of
//! `--help` and out of the way of each binary's own arguments (`alas`
//! takes free arguments and stdin).

use std::fs;
use std::io;
use std::path::Path;

use clap::{CommandFactory, Parser};
use clap_complete::Shell;

/// The environment variable that asks a binary for its documentation.
pub const GENERATE_ENV: &str = "ALASKA_GENERATE_DOCS";

/// Parses the process's flags as `A`; or, when [`GENERATE_ENV`] names a
/// folder, writes `A`'s man page and completions there and exits (status 0,
/// or 1 with the error on stderr).
pub fn parse<A: Parser + CommandFactory>() -> A {
    if let Some(dir) = std::env::var_os(GENERATE_ENV) {
        let cmd = A::command();
        let name = cmd.get_name().to_string();
        match generate(cmd, Path::new(&dir)) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!(
                    "{name}: generating documentation in {}: {e}",
                    Path::new(&dir).display()
                );
                std::process::exit(1)
            }
        }
    }
    A::parse()
}

/// Writes the man page and the bash, zsh and fish completions of `cmd`
/// under `dir`, creating the folders as needed.
pub fn generate(cmd: clap::Command, dir: &Path) -> io::Result<()> {
    let name = cmd.get_name().to_string();
    let man = dir.join("man");
    fs::create_dir_all(&man)?;
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    fs::write(man.join(format!("{name}.1")), page)?;
    for (shell, sub, file) in [
        (Shell::Bash, "bash", name.clone()),
        (Shell::Zsh, "zsh", format!("_{name}")),
        (Shell::Fish, "fish", format!("{name}.fish")),
    ] {
        let folder = dir.join("completions").join(sub);
        fs::create_dir_all(&folder)?;
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), name.clone(), &mut out);
        fs::write(folder.join(file), out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser, Debug)]
    #[command(name = "demo", about = "A demo command")]
    struct Demo {
        /// The configuration file.
        #[arg(short, long)]
        config: Option<String>,
    }

    #[test]
    fn writes_a_man_page_and_three_completions() {
        let dir = tempfile::tempdir().unwrap();
        generate(Demo::command(), dir.path()).unwrap();
        let man = fs::read_to_string(dir.path().join("man/demo.1")).unwrap();
        assert!(man.contains(".TH demo 1"), "{man}");
        assert!(man.contains("The configuration file"), "{man}");
        let bash = fs::read_to_string(dir.path().join("completions/bash/demo")).unwrap();
        assert!(bash.contains("--config"), "{bash}");
        let zsh = fs::read_to_string(dir.path().join("completions/zsh/_demo")).unwrap();
        assert!(zsh.starts_with("#compdef demo"), "{zsh}");
        let fish = fs::read_to_string(dir.path().join("completions/fish/demo.fish")).unwrap();
        assert!(fish.contains("-l config"), "{fish}");
    }
}
