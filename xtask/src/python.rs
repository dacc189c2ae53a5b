//! Python packages the tests need (moto's AWS emulator), installed with pip
//! into the interpreter the tests run: `$WINK_PYTHON`, else `python3`.

use std::env;

use anyhow::{Result, bail};

use crate::ctx::Ctx;
use crate::runner::Cmd;

/// The interpreter tests start Python servers with.
pub fn interpreter() -> String {
    env::var("WINK_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Installs, with pip, the requirements whose module does not import.
///
/// Each pair is `(module, requirement)`. Quick when all import. Debian's own
/// `python3` refuses pip installs (PEP 668, EXTERNALLY-MANAGED): then the
/// install adds `--break-system-packages`, and pip itself comes from apt's
/// `python3-pip` if missing.
pub fn ensure_packages(ctx: &mut Ctx, wanted: &[(&str, &str)]) -> Result<()> {
    let python = interpreter();
    let missing: Vec<_> = wanted.iter().filter(|(module, _)| !imports(&python, module)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !imports(&python, "pip") {
        ctx.ensure_apt_packages(&[("/usr/lib/python3/dist-packages/pip", "python3-pip")])?;
    }
    let requirements: Vec<_> = missing.iter().map(|(_, requirement)| *requirement).collect();
    eprintln!(
        "xtask: installing Python packages {} with {python}...",
        requirements.join(" ")
    );
    let mut install = Cmd::new(&python).args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]);
    if externally_managed(&python) {
        install = install.arg("--break-system-packages");
    }
    install.args(&requirements).run()?;
    if let Some((module, requirement)) = missing.iter().find(|(module, _)| !imports(&python, module)) {
        bail!("pip installed {requirement} but `{python}` still cannot import {module}");
    }
    Ok(())
}

/// Whether `python` can import `module`.
fn imports(python: &str, module: &str) -> bool {
    Cmd::new(python)
        .args(["-c", &format!("import {module}")])
        .capture()
        .is_ok()
}

/// Whether `python` is a distribution's interpreter that pip must not touch
/// without `--break-system-packages`.
fn externally_managed(python: &str) -> bool {
    let probe = "import os, sysconfig; \
                 print(os.path.exists(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))";
    Cmd::new(python)
        .args(["-c", probe])
        .capture()
        .is_ok_and(|out| out.trim() == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_tells_present_from_missing_modules() {
        assert!(imports("python3", "os"));
        assert!(!imports("python3", "definitely_not_a_module_xtask"));
    }
}
