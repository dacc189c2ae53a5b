//! `cargo xtask demo`: the examples, end to end, with scripted models.

use anyhow::{Result, bail};

use crate::ctx::Ctx;
use crate::guests;
use crate::runner::Cmd;

/// One example run: a header name and the `wink-host run` arguments.
struct Example {
    /// Printed as `== name ==` before the run.
    name: &'static str,
    /// Arguments after `wink-host run <component>`; paths are relative to
    /// the repository root, `{wasm}` stands for `T/wasm`.
    args: &'static [&'static str],
}

/// The examples the demo runs, in order.
const EXAMPLES: &[Example] = &[
    Example {
        name: "file-digest",
        args: &[
            "--input",
            r#"{"question":"What is in the workspace?"}"#,
            "--workspace",
            "examples/file-digest/workspace",
            "--model",
            "scripted:examples/file-digest/script.json",
            "--tool",
            "{wasm}/read_file.wasm",
        ],
    },
    Example {
        name: "hello",
        args: &["--model", "scripted:examples/hello/script.json", "--input", "{}"],
    },
];

/// Builds guests and the host, then runs every example; fails if any fails
/// (after running them all).
pub fn run(ctx: &mut Ctx) -> Result<()> {
    guests::ensure_and_build(ctx, guests::DEFAULT_PROFILE)?;
    eprintln!("xtask: building the host...");
    ctx.cargo().args(["build", "-p", "wink-host"]).run()?;
    let mut failed = Vec::new();
    for example in EXAMPLES {
        println!("== {} ==", example.name);
        if let Err(err) = run_example(ctx, example) {
            eprintln!("xtask: error: {err:#}");
            failed.push(example.name);
        }
        println!();
    }
    if !failed.is_empty() {
        bail!("demo failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Runs one example with the freshly built host.
fn run_example(ctx: &Ctx, example: &Example) -> Result<()> {
    let wasm = ctx.wasm_dir();
    let wasm = wasm.to_string_lossy();
    let component = format!("{wasm}/{}.wasm", example.name);
    let args = example.args.iter().map(|a| a.replace("{wasm}", &wasm));
    Cmd::new(ctx.target.join("debug/wink-host"))
        .dir(&ctx.root)
        .args(["run", component.as_str()])
        .args(args)
        .run()
}
