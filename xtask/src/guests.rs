//! Discovering guest crates, building them to components and copying the
//! results to `T/wasm/<name>.wasm`.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::ctx::Ctx;
use crate::toolchain::{GUEST_TARGET, Toolchain};

/// The default cargo profile for guests (defined in the workspace manifest).
pub const DEFAULT_PROFILE: &str = "guest";

/// Where guest crates live, and what they are: each directory with a
/// `Cargo.toml` directly under one of these is a guest.
const GUEST_DIRS: &[(&str, Kind)] = &[
    ("examples", Kind::Agent),
    ("tests/guests", Kind::Agent),
    ("tools", Kind::Tool),
    // Adversarial tools for the host's isolation tests; kept out of tools/
    // so that only production tools ship from there.
    ("tests/tools", Kind::Tool),
];

/// The first bytes of a WebAssembly component (magic, version 0xd, layer 1).
const COMPONENT_HEADER: &[u8] = b"\0asm\x0d\0\x01\0";

/// Which guest SDK world a guest targets. Each kind builds in its own cargo
/// invocation, so feature unification never enables `agent` and `tool` together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An agent (exports `run`).
    Agent,
    /// A tool (exports `spec` and `invoke`).
    Tool,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Agent => "agents",
            Self::Tool => "tools",
        })
    }
}

/// One guest crate.
#[derive(Debug, PartialEq, Eq)]
pub struct Guest {
    /// The package name (also the name of the copied component).
    pub name: String,
    /// `[lib] name`, when the manifest overrides it.
    lib_name: Option<String>,
    /// Agent or tool.
    pub kind: Kind,
}

impl Guest {
    /// File names cargo may give this guest's component, most likely first:
    /// the library name (dashes become underscores), then a binary's name.
    fn artifact_names(&self) -> Vec<String> {
        let lib = self.lib_name.clone().unwrap_or_else(|| self.name.replace('-', "_"));
        let mut names = vec![format!("{lib}.wasm")];
        let bin = format!("{}.wasm", self.name);
        if bin != names[0] {
            names.push(bin);
        }
        names
    }
}

/// A component copied to `T/wasm`.
pub struct Built {
    /// The copied component.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Whether the copy changed (false: identical, left untouched).
    pub updated: bool,
}

/// Picks the guest toolchain, then builds every guest with `profile`.
pub fn ensure_and_build(ctx: &mut Ctx, profile: &str) -> Result<Vec<Built>> {
    let toolchain = Toolchain::ensure(ctx)?;
    build(ctx, toolchain, profile)
}

/// Builds every guest with `toolchain` and `profile` (agents, then tools)
/// and copies the components to `T/wasm`, printing what was built.
pub fn build(ctx: &Ctx, toolchain: Toolchain, profile: &str) -> Result<Vec<Built>> {
    let guests = discover(&ctx.root)?;
    if guests.is_empty() {
        eprintln!("xtask: no guest crates found under examples/, tests/guests/, tools/ or tests/tools/");
        return Ok(Vec::new());
    }
    for kind in [Kind::Agent, Kind::Tool] {
        let names: Vec<_> = guests.iter().filter(|g| g.kind == kind).map(|g| &g.name).collect();
        if names.is_empty() {
            continue;
        }
        eprintln!("xtask: building guest {kind}...");
        names
            .iter()
            .fold(toolchain.cargo_build(ctx, profile), |cmd, name| {
                cmd.args(["-p", name.as_str()])
            })
            .run()
            .with_context(|| format!("building guest {kind}"))?;
    }
    let out_dir = ctx.guest_target().join(GUEST_TARGET).join(profile_dir(profile));
    let wasm_dir = ctx.wasm_dir();
    fs::create_dir_all(&wasm_dir).with_context(|| format!("creating {}", wasm_dir.display()))?;
    let built = guests
        .iter()
        .map(|guest| publish(guest, &out_dir, &wasm_dir))
        .collect::<Result<Vec<_>>>()?;
    print_built(&built);
    Ok(built)
}

/// Lists the guest crates in the workspace, sorted by directory.
pub fn discover(root: &Path) -> Result<Vec<Guest>> {
    let mut guests = Vec::new();
    for (dir, kind) in GUEST_DIRS {
        let dir = root.join(dir);
        if !dir.is_dir() {
            continue;
        }
        let mut crates: Vec<_> = fs::read_dir(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .map(|entry| entry.map(|e| e.path().join("Cargo.toml")))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("listing {}", dir.display()))?;
        crates.retain(|manifest| manifest.is_file());
        crates.sort();
        for manifest in crates {
            let text = fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
            let Some(name) = toml_string(&text, "package", "name") else {
                bail!("{} has no [package] name", manifest.display());
            };
            let lib_name = toml_string(&text, "lib", "name");
            guests.push(Guest {
                name,
                lib_name,
                kind: *kind,
            });
        }
    }
    Ok(guests)
}

/// Finds `key = "value"` in `[section]` of a TOML document, with a line scan
/// that is enough for the workspace's own manifests.
fn toml_string(text: &str, section: &str, key: &str) -> Option<String> {
    let mut in_section = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_section = line == format!("[{section}]");
            continue;
        }
        if !in_section {
            continue;
        }
        let Some((k, value)) = line.split_once('=') else {
            continue;
        };
        if k.trim() != key {
            continue;
        }
        let value = value.trim();
        let quote = value.chars().next().filter(|c| *c == '"' || *c == '\'')?;
        let rest = &value[1..];
        return rest.find(quote).map(|end| rest[..end].to_owned());
    }
    None
}

/// The directory cargo uses for a profile's output.
fn profile_dir(profile: &str) -> &str {
    match profile {
        "dev" | "test" => "debug",
        "bench" => "release",
        other => other,
    }
}

/// Copies `guest`'s component from `out_dir` to `wasm_dir/<name>.wasm`,
/// leaving the destination untouched when identical (stable mtimes).
fn publish(guest: &Guest, out_dir: &Path, wasm_dir: &Path) -> Result<Built> {
    let candidates = guest.artifact_names();
    let Some(source) = candidates
        .iter()
        .map(|name| out_dir.join(name))
        .find(|path| path.is_file())
    else {
        bail!(
            "no component for guest {} in {} (looked for {})",
            guest.name,
            out_dir.display(),
            candidates.join(", ")
        );
    };
    let bytes = fs::read(&source).with_context(|| format!("reading {}", source.display()))?;
    if !bytes.starts_with(COMPONENT_HEADER) {
        eprintln!("xtask: warning: {} is not a WebAssembly component", source.display());
    }
    let path = wasm_dir.join(format!("{}.wasm", guest.name));
    let updated = fs::read(&path).map_or(true, |old| old != bytes);
    if updated {
        fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(Built {
        path,
        size: bytes.len() as u64,
        updated,
    })
}

/// Prints the copied components with their sizes.
fn print_built(built: &[Built]) {
    eprintln!("xtask: built {} guest components:", built.len());
    for b in built {
        let note = if b.updated { "updated" } else { "unchanged" };
        eprintln!(
            "xtask:   {:<48} {:>8.1} KiB  ({note})",
            b.path.display(),
            b.size as f64 / 1024.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
[package]
name = "file-digest" # the example
version.workspace = true

[lib]
crate-type = ["cdylib"]

[dependencies]
name = { path = "x" }
"#;

    #[test]
    fn scans_package_and_lib_names() {
        assert_eq!(toml_string(MANIFEST, "package", "name").as_deref(), Some("file-digest"));
        assert_eq!(toml_string(MANIFEST, "lib", "name"), None);
        let lib = "[lib]\nname='digest'\n";
        assert_eq!(toml_string(lib, "lib", "name").as_deref(), Some("digest"));
    }

    #[test]
    fn artifact_names_prefer_the_library() {
        let guest = Guest {
            name: "file-digest".into(),
            lib_name: None,
            kind: Kind::Agent,
        };
        assert_eq!(guest.artifact_names(), ["file_digest.wasm", "file-digest.wasm"]);
        let tool = Guest {
            name: "read_file".into(),
            lib_name: None,
            kind: Kind::Tool,
        };
        assert_eq!(tool.artifact_names(), ["read_file.wasm"]);
    }

    #[test]
    fn profile_dirs_follow_cargo() {
        assert_eq!(profile_dir("guest"), "guest");
        assert_eq!(profile_dir("dev"), "debug");
        assert_eq!(profile_dir("release"), "release");
    }

    #[test]
    fn discovers_agents_and_tools() -> Result<()> {
        let root = std::env::temp_dir().join(format!("xtask-discover-{}", std::process::id()));
        for (dir, name) in [
            ("examples/b", "b"),
            ("examples/a", "a"),
            ("tools/t", "t"),
            ("tests/guests/g", "g"),
            ("tests/tools/e", "e"),
        ] {
            fs::create_dir_all(root.join(dir))?;
            let manifest = format!("[package]\nname = \"{name}\"\n");
            fs::write(root.join(dir).join("Cargo.toml"), manifest)?;
        }
        fs::create_dir_all(root.join("examples/not-a-crate"))?;
        let found: Vec<_> = discover(&root)?.into_iter().map(|g| (g.name, g.kind)).collect();
        fs::remove_dir_all(&root)?;
        let expected = [
            ("a", Kind::Agent),
            ("b", Kind::Agent),
            ("g", Kind::Agent),
            ("t", Kind::Tool),
            ("e", Kind::Tool),
        ];
        let expected: Vec<_> = expected.iter().map(|(n, k)| (n.to_string(), *k)).collect();
        assert_eq!(found, expected);
        Ok(())
    }
}
