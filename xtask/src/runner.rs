//! Running external commands: every command is echoed on stderr before it
//! runs, and a failure names the command and its exit status.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// A command to run, plus a shell-like rendering of it for logs and errors.
pub struct Cmd {
    /// The process to spawn.
    command: Command,
    /// `program arg...`, quoted for a POSIX shell.
    shown: String,
    /// `KEY=value` assignments made with [`Cmd::env`], shown before the program.
    shown_env: Vec<String>,
}

impl Cmd {
    /// A command running `program` (looked up in `PATH`).
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let program = program.as_ref();
        Self {
            command: Command::new(program),
            shown: quote(program),
            shown_env: Vec::new(),
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        let arg = arg.as_ref();
        self.shown.push(' ');
        self.shown.push_str(&quote(arg));
        self.command.arg(arg);
        self
    }

    /// Appends several arguments.
    pub fn args<I, S>(self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        args.into_iter().fold(self, Self::arg)
    }

    /// Sets an environment variable for the child (shown in the echoed line).
    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        let value = value.as_ref();
        self.shown_env.push(format!("{key}={}", quote(value)));
        self.command.env(key, value);
        self
    }

    /// Leaves an environment variable out of the child's environment.
    pub fn env_remove(mut self, key: &str) -> Self {
        self.command.env_remove(key);
        self
    }

    /// Runs the child in `dir`.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.command.current_dir(dir);
        self
    }

    /// Runs the command with inherited stdio; fails unless it exits with 0.
    pub fn run(mut self) -> Result<()> {
        eprintln!("xtask: $ {}", self.echo());
        let status = self
            .command
            .status()
            .with_context(|| format!("could not start `{}`", self.shown))?;
        if !status.success() {
            bail!("`{}` failed with {status}", self.shown);
        }
        Ok(())
    }

    /// Runs the command silently and returns its stdout; fails unless it
    /// exits with 0 (the error then includes the first line of stderr).
    pub fn capture(mut self) -> Result<String> {
        let output = self
            .command
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("could not start `{}`", self.shown))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let first = stderr.lines().next().unwrap_or("").trim();
            bail!("`{}` failed with {}: {first}", self.shown, output.status);
        }
        String::from_utf8(output.stdout).with_context(|| format!("`{}` printed non-UTF-8 output", self.shown))
    }

    /// The full echoed line: environment assignments, then the command.
    fn echo(&self) -> String {
        let mut line = self.shown_env.join(" ");
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&self.shown);
        line
    }
}

/// Quotes `word` for a POSIX shell when it contains anything but safe characters.
fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_quotes_only_what_needs_it() {
        let cmd = Cmd::new("wink-host")
            .args(["run", "--input", r#"{"q":"What's up?"}"#, ""])
            .env("WINK_GUEST_DIR", "/t/wasm");
        assert_eq!(
            cmd.echo(),
            r#"WINK_GUEST_DIR=/t/wasm wink-host run --input '{"q":"What'\''s up?"}' ''"#
        );
    }

    #[test]
    fn failure_names_command_and_status() {
        let err = Cmd::new("sh").args(["-c", "exit 3"]).run();
        let msg = err.err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert_eq!(msg, "`sh -c 'exit 3'` failed with exit status: 3");
    }

    #[test]
    fn missing_program_is_reported() {
        let err = Cmd::new("definitely-not-a-program-xtask").run();
        let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(msg, "could not start `definitely-not-a-program-xtask`");
    }
}
