//! The host configuration file: the documented example, unknown keys and
//! bad values, and how flags lay over the file.

mod common;

use std::num::NonZeroU32;
use std::time::Duration;

use wink_host::config::{BedrockSection, GuardrailSection, HostConfig, RetrySection};
use wink_host::model::ModelSpec;
use wink_host::policy::HumanDuration;
use wink_host::worker::WorkerConfig;

/// The full example in docs/config.md, between its marker and the fence's end.
fn documented_example() -> String {
    let docs = std::fs::read_to_string(common::repo_root().join("docs/config.md")).expect("docs/config.md");
    let (_, after) = docs
        .split_once("<!-- config-example -->")
        .expect("docs/config.md marks its config example");
    let body = after.split_once("```toml\n").expect("a toml fence").1;
    body.split_once("```").expect("the fence ends").0.to_owned()
}

#[test]
fn the_documented_example_sets_every_section() {
    let config = HostConfig::parse(&documented_example(), "docs/config.md").expect("the example parses");
    assert_eq!(
        config.model.default,
        Some(ModelSpec::Bedrock("us.anthropic.claude-3-5-haiku-20241022-v1:0".into()))
    );
    let bedrock = &config.bedrock;
    assert_eq!(bedrock.region.as_deref(), Some("us-east-1"));
    assert_eq!(
        bedrock.retry.base_delay,
        Some(HumanDuration(Duration::from_millis(200)))
    );
    assert_eq!(bedrock.breaker.failure_threshold, NonZeroU32::new(10));
    let options = bedrock.options(None).expect("valid bedrock settings");
    let guardrail = options.guardrail.expect("a guardrail");
    assert_eq!(
        (guardrail.identifier.as_str(), guardrail.version.as_str()),
        ("abc123def456", "1")
    );
    assert_eq!(options.retry.max_delay, Duration::from_secs(10));
    assert_eq!(options.breaker.cool_down, Duration::from_secs(30));
    assert_eq!(config.budget.max_turns, Some(20));
    assert_eq!(config.budget.timeout, Some(HumanDuration(Duration::from_secs(300))));
    assert_eq!(config.prices["meta.llama3"].output_usd_per_mtok, 0.6);
    assert_eq!(
        config.worker,
        WorkerConfig::default(),
        "the example's [worker] values are the documented defaults"
    );
}

#[test]
fn an_empty_file_is_all_defaults() {
    let config = HostConfig::parse("", "empty.toml").expect("empty is valid");
    assert_eq!(config, HostConfig::default());
    let options = config.bedrock.options(Some("m".into())).expect("defaults are valid");
    assert_eq!(options.retry.max_attempts, 6);
    assert_eq!(options.breaker.failure_threshold, 10);
    assert!(options.guardrail.is_none() && !options.stream);
}

#[test]
fn unknown_keys_are_named_with_their_line() {
    let cases = [
        ("[modle]\ndefault = \"echo\"\n", "c.toml:1:", "modle"),
        (
            "[bedrock]\nregion = \"us-east-1\"\n\n[bedrock.retry]\nmax_attempt = 3\n",
            "c.toml:5:1:",
            "max_attempt",
        ),
        ("[worker]\nconcurrency = 2\nleese = \"1s\"\n", "c.toml:3:1:", "leese"),
        (
            "[budget]\nmax_turns = 3\nmax_tokens = 10\n",
            "c.toml:3:1:",
            "max_tokens",
        ),
        (
            "[prices]\n\"meta.llama3\" = { input_usd_per_mtok = 1, output = 2 }\n",
            "c.toml:2:",
            "output",
        ),
    ];
    for (text, position, key) in cases {
        let err = HostConfig::parse(text, "c.toml").unwrap_err().to_string();
        assert!(err.starts_with(&format!("config {position}")), "{text:?}: {err}");
        assert!(err.contains(&format!("`{key}`")), "{text:?}: {err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
}

#[test]
fn bad_values_are_named() {
    let cases = [
        ("[bedrock.retry]\nmax_attempts = 0\n", "c.toml:2:", "0"),
        ("[bedrock.breaker]\ncool_down = \"soon\"\n", "c.toml:2:", "\"soon\""),
        ("[model]\ndefault = \"gpt:4\"\n", "c.toml:2:", "\"gpt:4\""),
        ("[bedrock]\nstream = \"yes\"\n", "c.toml:2:", "\"yes\""),
        ("[budget]\nmax_usd = -1.0\n", "budget.max_usd", "-1"),
        ("[worker]\nmemory = \"64MB\"\n", "c.toml:2:", "64MB"),
        (
            "[worker]\nreply_queues = [\"replies-*\", \"*x\"]\n",
            "c.toml:2:",
            "`*x`",
        ),
        (
            "[prices]\n\"m\" = { input_usd_per_mtok = -2, output_usd_per_mtok = 1 }\n",
            "input_usd_per_mtok",
            "-2",
        ),
    ];
    for (text, position, value) in cases {
        let err = HostConfig::parse(text, "c.toml").unwrap_err().to_string();
        assert!(err.contains(position) && err.contains(value), "{text:?}: {err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
}

#[test]
fn settings_that_only_fail_together_are_named() {
    let with_guardrail = |identifier: Option<&str>, version: Option<&str>| BedrockSection {
        guardrail: GuardrailSection {
            identifier: identifier.map(str::to_owned),
            version: version.map(str::to_owned),
            trace: None,
        },
        ..BedrockSection::default()
    };
    let error = |section: BedrockSection| section.options(None).unwrap_err().to_string();
    let err = error(with_guardrail(Some("abc"), None));
    assert!(
        err.contains("\"abc\" needs a version") && err.contains("--bedrock-guardrail-version"),
        "{err}"
    );
    let err = error(with_guardrail(None, Some("1")));
    assert!(err.contains("version \"1\" needs a guardrail identifier"), "{err}");
    let err = error(with_guardrail(Some("abc"), Some("v1")));
    assert!(err.contains("\"v1\" is not DRAFT or a version number"), "{err}");
    let err = error(with_guardrail(Some("Not An Id"), Some("DRAFT")));
    assert!(err.contains("\"Not An Id\""), "{err}");
    let arn = "arn:aws:bedrock:us-east-1:123456789012:guardrail/abc123";
    assert!(with_guardrail(Some(arn), Some("DRAFT")).options(None).is_ok());

    let err = error(BedrockSection {
        endpoint_url: Some("localhost:4566".into()),
        ..BedrockSection::default()
    });
    assert!(
        err.contains("\"localhost:4566\"") && err.contains("--bedrock-endpoint"),
        "{err}"
    );
    let err = error(BedrockSection {
        retry: RetrySection {
            base_delay: Some(HumanDuration(Duration::from_secs(20))),
            ..RetrySection::default()
        },
        ..BedrockSection::default()
    });
    assert!(err.contains("20000ms is above max_delay 10000ms"), "{err}");
}

#[test]
fn an_empty_reply_queues_list_permits_no_reply_to() {
    let config = HostConfig::parse("[worker]\nreply_queues = []\n", "c.toml").expect("valid");
    let queues = &config.worker.reply_queues;
    assert!(!queues.permits("replies") && !queues.permits(""), "{queues}");
    assert_eq!(queues.to_string(), "none");
    assert!(
        WorkerConfig::default().reply_queues.permits("any-queue"),
        "the default permits any"
    );
}

#[test]
fn flags_override_the_file_key_by_key() {
    let file = HostConfig::parse(
        "[bedrock]\nregion = \"eu-west-1\"\nstream = true\n[bedrock.retry]\nmax_attempts = 2\nbase_delay = \"1s\"\n\
         [bedrock.guardrail]\nidentifier = \"abc\"\nversion = \"1\"\n",
        "c.toml",
    )
    .expect("valid");
    let flags = BedrockSection {
        stream: Some(false),
        retry: RetrySection {
            max_attempts: NonZeroU32::new(4),
            ..RetrySection::default()
        },
        guardrail: GuardrailSection {
            version: Some("DRAFT".into()),
            ..GuardrailSection::default()
        },
        ..BedrockSection::default()
    };
    let options = file.bedrock.overridden_by(flags).options(None).expect("valid");
    assert_eq!(options.region.as_deref(), Some("eu-west-1"), "kept from the file");
    assert!(!options.stream, "a flag can turn off what the file turns on");
    assert_eq!(options.retry.max_attempts, 4, "the flag wins");
    assert_eq!(options.retry.base_delay, Duration::from_secs(1), "kept from the file");
    let guardrail = options.guardrail.expect("guardrail");
    assert_eq!(
        (guardrail.identifier.as_str(), guardrail.version.as_str()),
        ("abc", "DRAFT")
    );
}

#[tokio::test]
async fn a_relative_script_path_is_relative_to_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wink.toml");
    std::fs::write(&path, "[model]\ndefault = \"scripted:replies.json\"\n").expect("write");
    let config = HostConfig::load(&path).await.expect("loads");
    assert_eq!(
        config.model.default,
        Some(ModelSpec::Scripted(dir.path().join("replies.json")))
    );
    let missing = HostConfig::load(&dir.path().join("nope.toml"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        missing.starts_with("cannot read config") && missing.contains("nope.toml"),
        "{missing}"
    );
}
