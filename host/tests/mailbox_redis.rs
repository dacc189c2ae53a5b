//! The Redis mailbox against real `redis-server` processes: the shared
//! contract on one server and on a 3-node cluster, stale workers, reaping by
//! another worker, blocking waits, a server killed and restarted from its
//! append-only file while jobs flow, and the shared usage ledger.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use common::mailbox_contract::{self, MailboxFactory};
use common::redis::{RedisCluster, RedisServer};
use wink_host::mailbox::{self, Acked, Lease, Mailbox, MailboxError, RedisMailbox, RedisUsageLedger, Reply, Sent};
use wink_host::model::{
    Budget, CallContext, ContentBlock, ConverseRequest, InferenceConfig, Message, ModelError, ModelPolicy, Role,
    ScriptedProvider, Spent, UsageLedger,
};

const LEASE: Duration = Duration::from_secs(30);
const NO_WAIT: Duration = Duration::ZERO;

/// Fresh queues (`contract-0`, `contract-1`, ...) on one Redis deployment.
struct RedisQueues {
    url: String,
    next: AtomicUsize,
    /// Kept alive for the test; killed on drop.
    _server: Option<RedisServer>,
}

impl RedisQueues {
    fn on(server: RedisServer) -> Self {
        Self {
            url: server.url(),
            next: AtomicUsize::new(0),
            _server: Some(server),
        }
    }
}

#[async_trait]
impl MailboxFactory for RedisQueues {
    async fn fresh(&self, reply_ttl: Duration) -> Arc<dyn Mailbox> {
        let queue = format!("contract-{}", self.next.fetch_add(1, Ordering::Relaxed));
        let mailbox = RedisMailbox::open(&self.url, &queue).await.expect("open redis mailbox");
        Arc::new(mailbox.with_reply_ttl(reply_ttl))
    }
}

mailbox_contract_tests!(RedisQueues::on(RedisServer::start()));

async fn open(server: &RedisServer, queue: &str) -> RedisMailbox {
    RedisMailbox::open(&server.url(), queue)
        .await
        .expect("open redis mailbox")
}

fn reply(request_id: &str, body: &str) -> Reply {
    Reply {
        request_id: request_id.into(),
        body: Bytes::from(body.to_owned()),
    }
}

#[tokio::test]
async fn a_stale_worker_cannot_finish_over_the_new_owner() {
    let server = RedisServer::start();
    let (stuck, fresh) = (open(&server, "jobs").await, open(&server, "jobs").await);
    stuck.send("r1", Bytes::from_static(b"job")).await.unwrap();
    let old = stuck
        .claim(1, Duration::from_millis(200), NO_WAIT)
        .await
        .unwrap()
        .remove(0);
    let new = fresh
        .claim(1, LEASE, Duration::from_secs(5))
        .await
        .unwrap()
        .pop()
        .expect("the other worker gets it once the lease lapses");
    assert_eq!((new.lease.message_id.as_str(), new.attempt), ("r1", 2));
    assert!(matches!(
        stuck.ack(&old.lease, &reply("r1", "late")).await,
        Err(MailboxError::LeaseLost { .. })
    ));
    assert!(stuck.extend(&old.lease, LEASE).await.is_err());
    assert_eq!(
        fresh.ack(&new.lease, &reply("r1", "on time")).await.unwrap(),
        Acked::Replied
    );
    assert_eq!(stuck.reply("r1").await.unwrap(), Some(Bytes::from_static(b"on time")));
}

#[tokio::test]
async fn any_worker_can_reap_the_leases_of_a_dead_one() {
    let server = RedisServer::start();
    let dead = open(&server, "jobs").await;
    for id in ["a", "b", "c"] {
        dead.send(id, Bytes::new()).await.unwrap();
    }
    assert_eq!(
        dead.claim(3, Duration::from_millis(100), NO_WAIT).await.unwrap().len(),
        3
    );
    drop(dead);
    let survivor = open(&server, "jobs").await;
    assert_eq!(survivor.depth().await.unwrap().in_flight, 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(survivor.reap().await.unwrap(), 3);
    let depth = survivor.depth().await.unwrap();
    assert_eq!((depth.ready, depth.in_flight), (3, 0));
    let again = survivor.claim(10, LEASE, NO_WAIT).await.unwrap();
    assert_eq!(again.len(), 3);
    assert!(again.iter().all(|d| d.attempt == 2));
}

#[tokio::test]
async fn batches_bigger_than_one_script_call_are_split_and_kept_in_order() {
    const MESSAGES: usize = 2_500;
    let server = RedisServer::start();
    let mailbox = open(&server, "big").await;
    let messages: Vec<(String, Bytes)> = (0..MESSAGES)
        .map(|i| (format!("m{i:05}"), Bytes::from(i.to_string())))
        .collect();
    let sent = mailbox.send_batch(&messages).await.unwrap();
    assert!(sent.iter().all(|r| matches!(r, Ok(Sent::Enqueued))));
    let mut claimed = Vec::new();
    loop {
        let batch = mailbox.claim(5_000, LEASE, NO_WAIT).await.unwrap();
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= 1_000, "one claim is capped at 1000, got {}", batch.len());
        claimed.extend(batch);
    }
    let order: Vec<&str> = claimed.iter().map(|d| d.lease.message_id.as_str()).collect();
    let expected: Vec<&str> = messages.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(order, expected);
    let mut acks: Vec<(Lease, Reply)> = claimed
        .iter()
        .map(|d| (d.lease.clone(), reply(&d.lease.message_id, "done")))
        .collect();
    // An invalid request id in the middle answers its own error; the rest go through.
    acks.insert(1_200, (claimed[0].lease.clone(), reply("bad id", "x")));
    let results = mailbox.ack_batch(&acks).await.unwrap();
    assert_eq!(results.len(), MESSAGES + 1);
    assert!(matches!(&results[1_200], Err(MailboxError::Invalid(m)) if m.contains("`bad id`")));
    assert_eq!(
        results.iter().filter(|r| matches!(r, Ok(Acked::Replied))).count(),
        MESSAGES
    );
    assert_eq!(mailbox.depth().await.unwrap().backlog(), 0);
}

/// `calls=N` of one command in `INFO commandstats`.
fn calls(server: &RedisServer, command: &str) -> u64 {
    let stats = server.cli(&["info", "commandstats"]);
    stats
        .lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().expect("a call count"))
}

#[tokio::test]
async fn a_waiting_claim_blocks_on_the_server_instead_of_polling() {
    let server = RedisServer::start();
    let mailbox = open(&server, "idle").await;
    // Loads the claim script, so the count below is of claims only.
    assert!(mailbox.claim(1, LEASE, NO_WAIT).await.unwrap().is_empty());
    server.cli(&["config", "resetstat"]);
    let started = Instant::now();
    assert!(
        mailbox
            .claim(1, LEASE, Duration::from_secs(2))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(started.elapsed() >= Duration::from_millis(1900));
    let (claims, blocks) = (calls(&server, "evalsha"), calls(&server, "blpop"));
    assert!(claims <= 2, "{claims} claim scripts in a 2 s wait: that is polling");
    assert!(blocks >= 1, "the wait never blocked on the wake-up key");
}

#[tokio::test]
async fn a_waiting_claim_rides_over_killed_connections() {
    let server = RedisServer::start();
    let waiter = Arc::new(open(&server, "jobs").await);
    let claim = tokio::spawn({
        let waiter = waiter.clone();
        async move { waiter.claim(1, LEASE, Duration::from_secs(15)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // What a failover or a proxy restart does to blocked clients.
    let killed = server.cli(&["client", "kill", "type", "normal"]);
    assert!(killed.trim().parse::<u32>().unwrap() >= 2, "killed {killed}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    open(&server, "jobs").await.send("r1", Bytes::new()).await.unwrap();
    let batch = claim.await.unwrap().expect("the claim reconnects instead of failing");
    assert_eq!(batch.len(), 1, "the claim saw the job sent after the reconnect");
}

#[tokio::test]
async fn every_key_of_a_queue_shares_its_hash_tag() {
    let server = RedisServer::start();
    let mailbox = open(&server, "orders.v1").await;
    for id in ["a", "b", "c"] {
        mailbox.send(id, Bytes::new()).await.unwrap();
    }
    let batch = mailbox.claim(3, LEASE, NO_WAIT).await.unwrap();
    mailbox.ack(&batch[0].lease, &reply("a", "ok")).await.unwrap();
    mailbox.nack(&batch[1].lease, Duration::from_secs(60)).await.unwrap();
    let reason = mailbox::DeadLetterReason {
        kind: "k".into(),
        message: "m".into(),
    };
    mailbox.dead_letter(&batch[2].lease, &reason).await.unwrap();
    let keys: BTreeSet<String> = server.cli(&["--scan"]).lines().map(str::to_owned).collect();
    let expected: BTreeSet<String> = ["jobs", "attempts", "delayed", "dlq", "dead", "wake", "seq", "reply:a"]
        .iter()
        .map(|suffix| format!("{{wink:orders.v1}}:{suffix}"))
        .collect();
    assert_eq!(keys, expected);
    let ttl: i64 = server
        .cli(&["pttl", "{wink:orders.v1}:reply:a"])
        .trim()
        .parse()
        .unwrap();
    assert!(
        ttl > 86_000_000 && ttl <= 86_400_000,
        "default reply TTL is 24 h, got {ttl} ms"
    );
}

#[tokio::test]
async fn a_requeue_the_server_fails_partway_through_counts_what_it_moved() {
    let server = RedisServer::start();
    let mailbox = open(&server, "jobs").await;
    // Loads the script, so that each call below is one request.
    assert_eq!(mailbox.requeue_dead(&mailbox::DeadSelection::All).await.unwrap(), 0);
    let reason = mailbox::DeadLetterReason {
        kind: "k".into(),
        message: "m".into(),
    };
    // One more than a script call moves.
    for index in 0..1001 {
        mailbox.send(&format!("r{index}"), Bytes::new()).await.unwrap();
    }
    let mut dead = 0;
    while dead < 1001 {
        for delivery in mailbox.claim(500, LEASE, NO_WAIT).await.unwrap() {
            mailbox.dead_letter(&delivery.lease, &reason).await.unwrap();
            dead += 1;
        }
    }
    // The same queue through a proxy that lets one call of the script through.
    let proxy = common::proxy::cutting_after(&format!("127.0.0.1:{}", server.port()), b"\r\nall\r\n", 1).await;
    let cut_off = RedisMailbox::open(&format!("redis://{proxy}"), "jobs").await.unwrap();

    let err = cut_off.requeue_dead(&mailbox::DeadSelection::All).await.unwrap_err();
    let MailboxError::RequeueInterrupted { moved, refused, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!((moved, refused), (&1000, &0));
    assert!(
        err.to_string()
            .starts_with("requeued 1000 dead letters, then the mailbox failed: "),
        "{err}"
    );
    assert_eq!(mailbox.requeue_dead(&mailbox::DeadSelection::All).await.unwrap(), 1);
    let depth = mailbox.depth().await.unwrap();
    assert_eq!((depth.ready, depth.dead), (1001, 0));
}

#[tokio::test]
async fn open_reads_the_url_and_names_bad_ones() {
    let server = RedisServer::start();
    let mailbox = mailbox::open(&format!("{}/3?reply_ttl=90s", server.url()), "q")
        .await
        .unwrap();
    mailbox.send("r1", Bytes::new()).await.unwrap();
    let delivery = mailbox.claim(1, LEASE, NO_WAIT).await.unwrap().remove(0);
    mailbox.ack(&delivery.lease, &reply("r1", "ok")).await.unwrap();
    let ttl: i64 = server
        .cli(&["-n", "3", "pttl", "{wink:q}:reply:r1"])
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 80_000 && ttl <= 90_000, "reply_ttl=90s gave {ttl} ms");

    for (url, expected) in [
        ("redis://127.0.0.1:notaport", "`redis://127.0.0.1:notaport`"),
        ("redis+cluster://127.0.0.1:1,nonsense", "cluster node `nonsense`"),
        ("redis://127.0.0.1:1?reply_ttl=forever", "reply_ttl"),
        ("redis://u:hunter2@127.0.0.1:1", "redis://u:***@127.0.0.1:1"),
        ("sqlite://x", "unsupported mailbox URL scheme `sqlite`"),
    ] {
        let err = mailbox::open(url, "q").await.unwrap_err().to_string();
        assert!(err.contains(expected), "{url}: {err}");
        assert!(!err.contains("hunter2"), "{url}: the password leaked: {err}");
    }
    let err = mailbox::open(&server.url(), "bad queue").await.unwrap_err().to_string();
    assert!(err.contains("queue name `bad queue`"), "{err}");
    let err = RedisMailbox::open(&server.url(), "q")
        .await
        .unwrap()
        .send("has space", Bytes::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("request id `has space`"), "{err}");
}

/// Consumers and a producer run through the mailbox API while Redis is
/// SIGKILLed and restarted from its append-only file three times. Every id
/// sent must end up answered, with exactly the answer its job produced, and
/// no request may be answered (`Acked::Replied`) twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_with_aof_loses_no_job_and_answers_each_once() {
    const JOBS: usize = 1500;
    const RESTARTS: usize = 3;
    let server = Arc::new(Mutex::new(RedisServer::start_durable()));
    let url = server.lock().unwrap().url();
    let producer = RedisMailbox::open(&url, "chaos").await.unwrap();
    let workers = [
        Arc::new(RedisMailbox::open(&url, "chaos").await.unwrap()),
        Arc::new(RedisMailbox::open(&url, "chaos").await.unwrap()),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let replied: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let deliveries = Arc::new(AtomicUsize::new(0));

    let consumers: Vec<_> = (0..4)
        .map(|n| {
            let mailbox = workers[n % 2].clone();
            let (stop, errors, replied, deliveries) =
                (stop.clone(), errors.clone(), replied.clone(), deliveries.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let batch = match mailbox
                        .claim(16, Duration::from_secs(1), Duration::from_millis(200))
                        .await
                    {
                        Ok(batch) => batch,
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    deliveries.fetch_add(batch.len(), Ordering::Relaxed);
                    let acks: Vec<(Lease, Reply)> = batch
                        .iter()
                        .map(|d| {
                            let id = &d.lease.message_id;
                            (d.lease.clone(), reply(id, &format!("answer:{id}")))
                        })
                        .collect();
                    match mailbox.ack_batch(&acks).await {
                        Ok(results) => {
                            for ((lease, _), result) in acks.iter().zip(results) {
                                if let Ok(Acked::Replied) = result {
                                    *replied.lock().unwrap().entry(lease.message_id.clone()).or_default() += 1;
                                }
                            }
                        }
                        // The leases lapse and the jobs come back.
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();

    let chaos = tokio::task::spawn_blocking({
        let server = server.clone();
        move || {
            for _ in 0..RESTARTS {
                std::thread::sleep(Duration::from_millis(400));
                server.lock().unwrap().kill();
                std::thread::sleep(Duration::from_millis(200));
                server.lock().unwrap().restart();
            }
        }
    });

    let ids: Vec<String> = (0..JOBS).map(|i| format!("job-{i}")).collect();
    for id in &ids {
        // A send whose answer was lost may or may not have landed; sending
        // again is safe because send is idempotent on the request id.
        while !matches!(
            producer.send(id, Bytes::from(id.clone())).await,
            Ok(Sent::Enqueued | Sent::Duplicate)
        ) {
            errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    chaos.await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match producer.depth().await {
            Ok(depth) if depth.backlog() == 0 => break,
            _ if Instant::now() > deadline => panic!("jobs still pending: {:?}", producer.depth().await),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    stop.store(true, Ordering::Relaxed);
    for consumer in consumers {
        consumer.await.unwrap();
    }

    assert!(
        errors.load(Ordering::Relaxed) > 0,
        "the restarts never disturbed the traffic; the test proved nothing"
    );
    let mut missing = Vec::new();
    for id in &ids {
        match producer.reply(id).await.unwrap() {
            Some(body) => assert_eq!(body, Bytes::from(format!("answer:{id}")), "{id}"),
            None => missing.push(id.clone()),
        }
    }
    assert!(
        missing.is_empty(),
        "{} jobs lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let twice: Vec<_> = replied
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id.clone())
        .collect();
    assert!(twice.is_empty(), "answered twice: {twice:?}");
    let depth = producer.depth().await.unwrap();
    assert_eq!((depth.backlog(), depth.dead), (0, 0));
    eprintln!(
        "{JOBS} jobs, {} deliveries, {} errors survived across {RESTARTS} restarts",
        deliveries.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed)
    );
}

/// Fresh queues on a 3-node cluster (different queues land on different nodes).
struct ClusterQueues {
    url: String,
    next: AtomicUsize,
}

#[async_trait]
impl MailboxFactory for ClusterQueues {
    async fn fresh(&self, reply_ttl: Duration) -> Arc<dyn Mailbox> {
        let queue = format!("cluster-{}", self.next.fetch_add(1, Ordering::Relaxed));
        let mailbox = RedisMailbox::open(&self.url, &queue)
            .await
            .expect("open cluster mailbox");
        Arc::new(mailbox.with_reply_ttl(reply_ttl))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_keeps_the_whole_contract() {
    let cluster = RedisCluster::start();
    let queues = ClusterQueues {
        url: cluster.url(),
        next: AtomicUsize::new(0),
    };
    mailbox_contract::run_all(&queues).await;

    // The queues spread over the nodes (each queue is whole on one node, or
    // its scripts would have failed with CROSSSLOT).
    let nodes_with_queues = cluster
        .nodes()
        .iter()
        .filter(|node| !node.cli(&["--scan", "--pattern", "{wink:cluster-*"]).trim().is_empty())
        .count();
    assert!(nodes_with_queues >= 2, "all test queues landed on one node");

    let via_open = mailbox::open(&cluster.url(), "opened").await.unwrap();
    via_open.send("r1", Bytes::new()).await.unwrap();
    let delivery = via_open
        .claim(1, LEASE, Duration::from_secs(1))
        .await
        .unwrap()
        .remove(0);
    via_open.ack(&delivery.lease, &reply("r1", "ok")).await.unwrap();
    assert_eq!(via_open.reply("r1").await.unwrap(), Some(Bytes::from_static(b"ok")));

    let ledger = RedisUsageLedger::open(&cluster.url()).await.unwrap();
    let spend = Spent {
        input_tokens: 5,
        output_tokens: 7,
        micro_usd: 11,
        turns: 1,
    };
    ledger.add("cluster-request", spend).await.unwrap();
    assert_eq!(ledger.spent("cluster-request").await.unwrap(), spend);
}

#[tokio::test]
async fn the_usage_ledger_is_shared_between_workers_and_expires() {
    let server = RedisServer::start();
    let url = server.url();
    let (a, b) = (
        RedisUsageLedger::open(&url).await.unwrap(),
        RedisUsageLedger::open(&url)
            .await
            .unwrap()
            .with_ttl(Duration::from_secs(60)),
    );
    assert_eq!(a.spent("r1").await.unwrap(), Spent::default());
    let one = Spent {
        input_tokens: 100,
        output_tokens: 20,
        micro_usd: 3_000_000_000,
        turns: 1,
    };
    assert_eq!(a.add("r1", one).await.unwrap(), one);
    let two = b.add("r1", one).await.unwrap();
    assert_eq!(
        two,
        Spent {
            input_tokens: 200,
            output_tokens: 40,
            micro_usd: 6_000_000_000,
            turns: 2,
        }
    );
    assert_eq!(a.spent("r1").await.unwrap(), two);
    assert_eq!(a.spent("r2").await.unwrap(), Spent::default(), "requests are separate");
    let ttl: i64 = server.cli(&["pttl", "wink:usage:r1"]).trim().parse().unwrap();
    assert!(
        ttl > 50_000 && ttl <= 60_000,
        "the last add set a 60 s TTL, got {ttl} ms"
    );

    let short = RedisUsageLedger::open(&url)
        .await
        .unwrap()
        .with_ttl(Duration::from_millis(100));
    short.add("r3", one).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(short.spent("r3").await.unwrap(), Spent::default(), "expired");

    let err = RedisUsageLedger::open("redis://127.0.0.1:notaport").await.unwrap_err();
    assert!(err.to_string().contains("notaport"), "{err}");
}

fn hello() -> ConverseRequest {
    ConverseRequest {
        model: None,
        system: vec![],
        messages: vec![Message {
            role: Role::User,
            content: vec![ContentBlock::Text("hello".into())],
        }],
        tools: vec![],
        config: InferenceConfig {
            max_tokens: None,
            temperature: None,
            top_p: None,
            top_k: None,
            stop_sequences: vec![],
        },
    }
}

/// A job that spent part of its budget on one worker, then was redelivered
/// to another, continues from what it spent instead of starting over.
#[tokio::test]
async fn a_redelivered_job_keeps_its_budget_on_another_worker() {
    let server = RedisServer::start();
    let policy = |ledger: RedisUsageLedger| ModelPolicy {
        budget: Budget {
            max_turns: Some(2),
            ..Budget::default()
        },
        ledger: Arc::new(ledger),
        ..ModelPolicy::default()
    };
    let first_worker = policy(RedisUsageLedger::open(&server.url()).await.unwrap());
    let second_worker = policy(RedisUsageLedger::open(&server.url()).await.unwrap());
    let provider = ScriptedProvider::echo();
    let context = CallContext {
        request_id: "order-7".into(),
        job_id: "job-1".into(),
        turn: 0,
        deadline: std::time::Instant::now() + Duration::from_secs(30),
        metrics: None,
    };
    first_worker.converse(&provider, hello(), &context).await.unwrap();
    assert_eq!(second_worker.remaining("order-7").await.unwrap().turns, Some(1));
    second_worker.converse(&provider, hello(), &context).await.unwrap();
    let refused = second_worker.converse(&provider, hello(), &context).await.unwrap_err();
    assert!(
        matches!(&refused, ModelError::BudgetExceeded(message) if message.contains("turns: limit 2, spent 2")),
        "{refused:?}"
    );

    // With Redis gone the call fails instead of running unaccounted.
    drop(server);
    let err = first_worker.converse(&provider, hello(), &context).await.unwrap_err();
    assert!(
        matches!(&err, ModelError::Provider(m) if m.contains("usage ledger unavailable")),
        "{err:?}"
    );
}

/// An agent asking for its budget while the shared ledger is down fails as
/// the host's fault, and is retried, rather than as the agent's trap.
#[tokio::test]
async fn asking_for_the_budget_with_the_ledger_down_is_a_retryable_host_failure() {
    let server = RedisServer::start();
    let ledger = RedisUsageLedger::open(&server.url()).await.unwrap();
    drop(server);
    let runtime = common::runtime();
    let agent = common::load(&runtime, "adversary").await;
    let mut env = common::env();
    env.model_policy = ModelPolicy {
        ledger: Arc::new(ledger),
        ..ModelPolicy::default()
    };
    let report = common::run(&runtime, &agent, r#"{"mode": "models", "count": 0}"#, env).await;
    let err = report.outcome.expect_err("the ledger is down");
    assert_eq!(err.kind(), "host", "{err}");
    assert!(
        err.to_string()
            .starts_with("host service failed: cannot read the job's budget: usage ledger unavailable: Redis at"),
        "{err}"
    );
    assert!(wink_host::worker::is_retryable(&err));
}
