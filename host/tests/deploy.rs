//! The deployment files: docker/Dockerfile and k8s/*.yaml, linted by the real
//! tools (hadolint, kubernetes-validate), and checked against each other for
//! the calibration that spans files (docs/deploy.md).
//!
//! `cargo xtask test` installs the linters and sets `WINK_REQUIRE_DEPLOY_LINT`,
//! which turns a missing linter into a failure instead of a skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use wink_host::policy::parse_duration;

const KUBERNETES_VERSION: &str = "1.30.0";

fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("..")
}

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
}

/// The linter `name`, or `None` (after saying so) when it is not installed
/// and not required.
fn linter(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("WINK_REQUIRE_DEPLOY_LINT").is_none(),
            "{name} is required (WINK_REQUIRE_DEPLOY_LINT) but not on PATH"
        );
        eprintln!("skipping: {name} is not installed (`cargo xtask test` installs it)");
    }
    found
}

fn run(program: &Path, args: &[&str], files: &[PathBuf]) -> Output {
    Command::new(program)
        .args(args)
        .args(files)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", program.display()))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The core manifests: every YAML file directly in k8s/. The CRDs (KEDA,
/// Prometheus Operator) live in subdirectories because no offline schema
/// exists for them.
fn core_manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("k8s"))
        .expect("k8s/ exists")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "expected the core manifests in k8s/, found {files:?}");
    files
}

fn validate(files: &[PathBuf]) -> Option<Output> {
    let tool = linter("kubernetes-validate")?;
    Some(run(&tool, &["--strict", "-k", KUBERNETES_VERSION], files))
}

#[test]
fn dockerfile_passes_hadolint() {
    let Some(hadolint) = linter("hadolint") else { return };
    let out = run(&hadolint, &[], &[repo_root().join("docker/Dockerfile")]);
    assert!(out.status.success(), "hadolint: {}", text(&out));
}

#[test]
fn hadolint_refuses_a_careless_dockerfile() {
    let Some(hadolint) = linter("hadolint") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let careless = dir.path().join("Dockerfile");
    std::fs::write(&careless, "FROM debian\nRUN apt-get install curl\n").expect("write");
    let out = run(&hadolint, &[], &[careless]);
    assert!(
        !out.status.success(),
        "hadolint accepted an untagged base: {}",
        text(&out)
    );
    assert!(text(&out).contains("DL3006"), "{}", text(&out));
}

#[test]
fn core_manifests_pass_strict_schema_validation() {
    let files = core_manifests();
    let Some(out) = validate(&files) else { return };
    assert!(out.status.success(), "kubernetes-validate: {}", text(&out));
    let report = text(&out);
    for kind in [
        "deployment",
        "configmap",
        "service",
        "serviceaccount",
        "poddisruptionbudget",
    ] {
        assert!(
            report.contains(&format!("for resource {kind}/")),
            "{kind} not validated: {report}"
        );
    }
}

#[test]
fn strict_validation_refuses_a_misspelt_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("deployment.yaml");
    let manifest = read("k8s/deployment.yaml").replace("readOnlyRootFilesystem", "readOnlyRootFilesytem");
    std::fs::write(&broken, manifest).expect("write");
    let Some(out) = validate(&[broken]) else { return };
    assert!(!out.status.success(), "a misspelt field passed: {}", text(&out));
    assert!(text(&out).contains("readOnlyRootFilesytem"), "{}", text(&out));
}

/// The number after `key:` on the first line that has it.
fn yaml_number(yaml: &str, key: &str) -> u64 {
    yaml.lines()
        .find_map(|line| line.trim().strip_prefix(key)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("no numeric `{key}:` found"))
}

/// The value of `key:` in the ConfigMap's data, quotes removed.
fn setting(key: &str) -> String {
    let configmap = read("k8s/configmap.yaml");
    configmap
        .lines()
        .find_map(|line| line.strip_prefix("  ")?.strip_prefix(key)?.strip_prefix(':'))
        .map(|value| value.trim().trim_matches('"').to_owned())
        .unwrap_or_else(|| panic!("configmap.yaml sets no `{key}`"))
}

fn duration(key: &str) -> Duration {
    parse_duration(&setting(key)).unwrap_or_else(|err| panic!("configmap.yaml `{key}`: {err}"))
}

fn number(key: &str) -> u64 {
    setting(key)
        .parse()
        .unwrap_or_else(|err| panic!("configmap.yaml `{key}`: {err}"))
}

/// The binary under test: `WINK_HOST_BIN` when set, else cargo's.
fn wink_host_binary() -> PathBuf {
    std::env::var_os("WINK_HOST_BIN").map_or_else(|| env!("CARGO_BIN_EXE_wink-host").into(), Into::into)
}

#[test]
fn every_configmap_variable_is_one_the_worker_reads() {
    let out = Command::new(wink_host_binary())
        .args(["worker", "--help"])
        .output()
        .expect("run wink-host worker --help");
    assert!(out.status.success(), "{}", text(&out));
    // Help text wraps; compare it with all whitespace runs made single spaces.
    let help = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    // Read by the logging setup rather than by a flag (docs/observability.md).
    let logging = ["WINK_LOG", "WINK_LOG_FORMAT"];
    let configmap = read("k8s/configmap.yaml");
    let keys: Vec<&str> = configmap
        .lines()
        .filter_map(|line| line.strip_prefix("  ")?.split_once(':').map(|(key, _)| key))
        .filter(|key| key.starts_with("WINK_"))
        .collect();
    assert!(keys.len() >= 10, "{keys:?}");
    for key in keys {
        assert!(
            logging.contains(&key) || help.contains(&format!("[env: {key}=")),
            "configmap.yaml sets {key}, which `wink-host worker` does not read"
        );
    }
}

#[test]
fn calibration_holds_across_the_manifests() {
    let lease = duration("WINK_LEASE");
    let heartbeat = duration("WINK_HEARTBEAT");
    let drain = duration("WINK_GRACE_PERIOD");
    assert!(
        heartbeat * 2 <= lease,
        "heartbeat {heartbeat:?} must be at most half the lease {lease:?}"
    );
    assert!(duration("WINK_READY_THRESHOLD") > duration("WINK_POLL_WAIT"));

    let deployment = read("k8s/deployment.yaml");
    let termination = Duration::from_secs(yaml_number(&deployment, "terminationGracePeriodSeconds"));
    assert!(
        termination >= lease + drain,
        "terminationGracePeriodSeconds {termination:?} < lease {lease:?} + grace period {drain:?}"
    );

    let port = number("WINK_HEALTH_PORT");
    assert_eq!(yaml_number(&deployment, "containerPort"), port);
    assert!(read("docker/Dockerfile").contains(&format!("EXPOSE {port}")));
    for probe in ["/health/live", "/health/ready"] {
        assert!(deployment.contains(&format!("path: {probe}")), "no probe on {probe}");
    }

    // Every job may grow to its memory limit: the pod's limit must hold them all.
    let memory_limit_gib = deployment
        .lines()
        .filter_map(|line| {
            line.trim()
                .strip_prefix("memory:")?
                .trim()
                .strip_suffix("Gi")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .expect("a memory limit in Gi");
    assert!(
        number("WINK_CONCURRENCY") * number("WINK_MEMORY") < memory_limit_gib << 30,
        "WINK_CONCURRENCY x WINK_MEMORY does not fit the pod's {memory_limit_gib}Gi"
    );

    // One replica per `WINK_CONCURRENCY` jobs of backlog, and backlog counts running jobs.
    let scaled = read("k8s/keda/scaledobject.yaml");
    assert_eq!(yaml_number(&scaled, "threshold"), number("WINK_CONCURRENCY"));
    let query = scaled
        .lines()
        .find_map(|line| line.trim().strip_prefix("query:"))
        .expect("a prometheus query");
    assert!(
        query.contains("wink_mailbox_depth") && query.contains("ready|in_flight"),
        "{query}"
    );
}
