//! A three-node cluster of real `livestock serve` processes on loopback: formation,
//! forwarding, a follower's own sold-out answers, leader kill and re-election with no
//! acknowledged change lost, idempotent retries across a failover, expiry decided by the new
//! leader, `no_leader` on a minority, and a follower that rejoins after missing a snapshot's
//! worth of entries.

#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{Answer, Client, Request, Scratch, Server};

const NODES: u64 = 3;

/// `livestock cluster ARGS...`, its exit status and output.
fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(support::BIN)
        .arg("cluster")
        .args(args)
        .output()
        .expect("run livestock cluster")
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address").port()
}

/// The cluster under test: processes, their data directories and peer addresses.
struct Cluster {
    scratch: Scratch,
    peers: String,
    peer_ports: BTreeMap<u64, u16>,
    nodes: BTreeMap<u64, Server>,
    extra: Vec<String>,
    /// Per node: how far its clock is off (`--clock-skew-ms`).
    skew_ms: BTreeMap<u64, i64>,
}

impl Cluster {
    fn start(label: &str, extra: &[&str]) -> Cluster {
        Cluster::start_with(label, extra, &[])
    }

    fn start_skewed(label: &str, skew_ms: &[(u64, i64)]) -> Cluster {
        Cluster::start_with(label, &[], skew_ms)
    }

    fn start_with(label: &str, extra: &[&str], skew_ms: &[(u64, i64)]) -> Cluster {
        let mut cluster = Cluster::new(label, extra, skew_ms);
        for id in 1..=NODES {
            cluster.start_node(id);
        }
        cluster
    }

    /// A cluster's directories and ports, none of its nodes started.
    fn new(label: &str, extra: &[&str], skew_ms: &[(u64, i64)]) -> Cluster {
        let scratch = Scratch::new(label);
        let peer_ports: BTreeMap<u64, u16> = (1..=NODES).map(|id| (id, free_port())).collect();
        let peers = peer_ports
            .iter()
            .map(|(id, port)| format!("{id}=127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        Cluster {
            scratch,
            peers,
            peer_ports,
            nodes: BTreeMap::new(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            skew_ms: skew_ms.iter().copied().collect(),
        }
    }

    fn start_node(&mut self, id: u64) {
        let data = self.scratch.join(&format!("n{id}"));
        let log = self.scratch.join(&format!("n{id}.log"));
        let peer_listen = format!("127.0.0.1:{}", self.peer_ports[&id]);
        let id_text = id.to_string();
        let skew = format!("--clock-skew-ms={}", self.skew_ms.get(&id).copied().unwrap_or(0));
        let mut args = vec![
            "--node-id",
            id_text.as_str(),
            "--peer-listen",
            peer_listen.as_str(),
            "--peers",
            self.peers.as_str(),
            skew.as_str(),
        ];
        args.extend(self.extra.iter().map(String::as_str));
        let server = Server::start(&data, &log, &args);
        self.nodes.insert(id, server);
    }

    fn kill(&mut self, id: u64) {
        if let Some(mut server) = self.nodes.remove(&id) {
            server.kill();
        }
    }

    fn client(&self, id: u64) -> Client {
        Client::new(&self.nodes[&id].base())
    }

    fn status(&self, id: u64) -> Option<Value> {
        match self.client(id).send(&Request::get("/v1/cluster")) {
            Answer::Reply { status: 200, body } => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    /// Waits until a live node reports itself leader and the others agree; its id.
    fn leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses: Vec<(u64, Value)> =
                self.nodes.keys().filter_map(|id| self.status(*id).map(|s| (*id, s))).collect();
            let leaders: Vec<u64> =
                statuses.iter().filter(|(_, s)| s["role"] == "leader").map(|(id, _)| *id).collect();
            if let [leader] = leaders.as_slice() {
                let agreed = statuses.iter().all(|(_, s)| s["leader_id"] == json!(leader));
                if agreed && statuses.len() == self.nodes.len() {
                    return *leader;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader in {timeout:?}: {statuses:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A write that succeeds once the new leader decides (retried on `no_leader`), sent to `id`.
    fn write_until_ok(&self, id: u64, request: &Request, timeout: Duration) -> Answer {
        let deadline = Instant::now() + timeout;
        loop {
            let answer = self.client(id).send(request);
            let retry = matches!(&answer, Answer::Lost(_))
                || answer.error_code().as_deref() == Some("no_leader");
            if !retry || Instant::now() >= deadline {
                return answer;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every live node has applied the same index with the same state digest.
    fn converged(&self, timeout: Duration) -> (u64, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let views: Vec<(Value, Value)> = self
                .nodes
                .keys()
                .filter_map(|id| self.status(*id))
                .map(|s| (s["applied_index"].clone(), s["state_digest"].clone()))
                .collect();
            if views.len() == self.nodes.len() && views.windows(2).all(|w| w[0] == w[1]) {
                let (index, digest) = &views[0];
                return (index.as_u64().unwrap_or(0), digest.as_str().unwrap_or("").to_owned());
            }
            assert!(Instant::now() < deadline, "replicas did not converge: {views:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn follower(&self, leader: u64) -> u64 {
        *self.nodes.keys().find(|id| **id != leader).expect("a follower")
    }
}

fn create_deal(id: &str, stock: u64) -> Request {
    let body = json!({ "id": id, "stream_id": "s1", "stock": stock });
    Request::post("/v1/deals", format!("create-{id}"), &body)
}

fn reserve(deal: &str, user: &str, key: &str) -> Request {
    Request::post(format!("/v1/deals/{deal}/reserve"), key, &json!({ "user_id": user, "qty": 1 }))
}

const ELECTION: Duration = Duration::from_secs(10);

#[test]
fn a_cluster_forms_forwards_and_agrees() {
    let cluster = Cluster::start("cluster-forms", &[]);
    let leader = cluster.leader(ELECTION);
    let follower = cluster.follower(leader);
    // A write sent to a follower is executed by the leader and answered with its answer.
    let created = cluster.write_until_ok(follower, &create_deal("d1", 3), ELECTION);
    assert!(created.is_success(), "{created:?}");
    let hold = cluster.write_until_ok(follower, &reserve("d1", "u1", "r1"), ELECTION);
    assert!(hold.is_success(), "{hold:?}");
    let hold_id = hold.json()["hold_id"].as_str().expect("a hold id").to_owned();
    // Reads are linearizable from any node: the hold is there wherever it is asked for.
    for id in cluster.nodes.keys() {
        let seen = cluster.client(*id).get_json(&format!("/v1/holds/{hold_id}"));
        assert_eq!(seen.expect("the hold")["state"], "held", "node {id}");
        let deal = cluster.client(*id).get_json("/v1/deals/d1").expect("the deal");
        assert_eq!(deal["held"], 1, "node {id}: {deal}");
    }
    let (index, digest) = cluster.converged(ELECTION);
    assert!(index >= 3, "a blank entry, the deal and the hold at least: {index}");
    assert_eq!(digest.len(), 16);
    let status = cluster.status(leader).expect("status");
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3), "{status}");
}

#[test]
fn a_fresh_follower_answers_sold_out_itself() {
    let cluster = Cluster::start("cluster-sold-out", &[]);
    let leader = cluster.leader(ELECTION);
    let follower = cluster.follower(leader);
    assert!(cluster.write_until_ok(leader, &create_deal("d1", 1), ELECTION).is_success());
    assert!(cluster.write_until_ok(leader, &reserve("d1", "u1", "r1"), ELECTION).is_success());
    cluster.converged(ELECTION);
    // Sold out now: the follower's own state says so, and it answers without the leader.
    let url = format!("{}/v1/deals/d1/reserve", cluster.nodes[&follower].base());
    let answer = ureq::post(&url)
        .set("Content-Type", "application/json")
        .send_string(r#"{"user_id":"u2","qty":1}"#);
    let Err(ureq::Error::Status(409, response)) = answer else {
        panic!("expected 409 sold_out, got {answer:?}")
    };
    assert!(response.header("x-livestock-leader").is_none(), "answered by the follower itself");
    let body: Value = serde_json::from_str(&response.into_string().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "sold_out");
}

/// A follower serves the live feed from the state it has applied (a feed cannot be forwarded),
/// and availability like any read (forwarded to the leader, `If-None-Match` with it).
#[test]
fn a_follower_serves_the_live_feed_and_availability() {
    use std::io::BufRead;
    let cluster = Cluster::start("cluster-feed", &[]);
    let leader = cluster.leader(ELECTION);
    let follower = cluster.follower(leader);
    assert!(cluster.write_until_ok(leader, &create_deal("d1", 2), ELECTION).is_success());
    cluster.converged(ELECTION);
    let base = cluster.nodes[&follower].base();
    let agent = ureq::AgentBuilder::new().timeout_read(ELECTION).build();
    let feed = agent.get(&format!("{base}/v1/deals/d1/live")).call().expect("the feed");
    assert_eq!(feed.header("content-type"), Some("text/event-stream"));
    let mut lines = std::io::BufReader::new(feed.into_reader()).lines();
    let mut data = move || loop {
        let line = lines.next().expect("the feed goes on").expect("the feed reads");
        if let Some(data) = line.strip_prefix("data: ") {
            return serde_json::from_str::<Value>(data).expect("JSON data");
        }
    };
    assert_eq!(data()["state"], "live", "the first event, from the follower's state");
    for (user, key) in [("u1", "f1"), ("u2", "f2")] {
        assert!(cluster.write_until_ok(leader, &reserve("d1", user, key), ELECTION).is_success());
    }
    let sold_out = loop {
        let event = data();
        if event["state"] == "sold_out" {
            break event;
        }
    };
    assert_eq!((&sold_out["available"], &sold_out["held"]), (&json!(0), &json!(2)));

    let url = format!("{base}/v1/deals/d1/availability");
    let answer = agent.get(&url).call().expect("200");
    let tag = answer.header("etag").expect("an ETag").to_owned();
    let body: Value = answer.into_json().expect("JSON");
    assert_eq!((&body["state"], &body["held"]), (&json!("sold_out"), &json!(2)));
    let answer = agent.get(&url).set("If-None-Match", &tag).call().expect("304");
    assert_eq!(answer.status(), 304, "If-None-Match travels with the forwarded read");
}

#[test]
fn killing_the_leader_loses_no_acknowledged_change_and_retries_get_the_same_answer() {
    let mut cluster = Cluster::start("cluster-failover", &[]);
    let leader = cluster.leader(ELECTION);
    assert!(cluster.write_until_ok(leader, &create_deal("d1", 100), ELECTION).is_success());
    let mut acknowledged = Vec::new();
    for n in 0..20 {
        let request = reserve("d1", &format!("u{n}"), &format!("k{n}"));
        let answer = cluster.write_until_ok(cluster.follower(leader), &request, ELECTION);
        assert!(answer.is_success(), "{answer:?}");
        acknowledged.push((request, answer));
    }
    cluster.kill(leader);
    let new_leader = cluster.leader(ELECTION);
    assert_ne!(new_leader, leader);
    // Every acknowledged reserve survived: the same key gets the same bytes back, from any node.
    for (request, answer) in &acknowledged {
        for id in cluster.nodes.keys() {
            let again = cluster.write_until_ok(*id, request, ELECTION);
            assert_eq!(&again, answer, "node {id} replayed a different answer");
        }
    }
    let deal = cluster.client(new_leader).get_json("/v1/deals/d1").expect("the deal");
    assert_eq!(deal["held"], 20, "{deal}");
    assert_eq!(deal["available"], 80, "{deal}");
    // The cluster goes on with two nodes, and the old leader rejoins.
    let more = reserve("d1", "late", "late");
    assert!(cluster.write_until_ok(new_leader, &more, ELECTION).is_success());
    cluster.start_node(leader);
    cluster.converged(ELECTION);
}

#[test]
fn the_new_leader_expires_holds_the_old_one_granted() {
    let mut cluster = Cluster::start("cluster-expiry", &[]);
    let leader = cluster.leader(ELECTION);
    let body = json!({ "id": "d1", "stream_id": "s1", "stock": 2, "hold_ttl_ms": 1000 });
    let create = Request::post("/v1/deals", "create", &body);
    assert!(cluster.write_until_ok(leader, &create, ELECTION).is_success());
    let hold = cluster.write_until_ok(leader, &reserve("d1", "u1", "r1"), ELECTION);
    assert!(hold.is_success(), "{hold:?}");
    let hold_id = hold.json()["hold_id"].as_str().expect("hold id").to_owned();
    cluster.converged(ELECTION);
    cluster.kill(leader);
    let new_leader = cluster.leader(ELECTION);
    // The units come back only when the new leader decides the expiry and it commits (a
    // hold's view says `expired` as soon as its time has passed, decided or not).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let deal = cluster.client(new_leader).get_json("/v1/deals/d1").expect("deal");
        if (deal["held"].clone(), deal["available"].clone()) == (json!(0), json!(2)) {
            break;
        }
        assert!(Instant::now() < deadline, "the hold's units never came back: {deal}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let hold = cluster.client(new_leader).get_json(&format!("/v1/holds/{hold_id}"));
    assert_eq!(hold.expect("the hold")["state"], "expired");
    cluster.converged(ELECTION);
}

#[test]
fn a_minority_answers_no_leader_promptly() {
    let mut cluster = Cluster::start("cluster-minority", &[]);
    let leader = cluster.leader(ELECTION);
    assert!(cluster.write_until_ok(leader, &create_deal("d1", 5), ELECTION).is_success());
    let survivor = cluster.follower(leader);
    let others: Vec<u64> = cluster.nodes.keys().copied().filter(|id| *id != survivor).collect();
    for id in others {
        cluster.kill(id);
    }
    let started = Instant::now();
    let answer = cluster.client(survivor).send(&reserve("d1", "u1", "k1"));
    let took = started.elapsed();
    assert_eq!(answer.error_code().as_deref(), Some("no_leader"), "{answer:?}");
    // Never a hang: the commit timeout (2 s) plus the forward margin at most.
    assert!(took < Duration::from_secs(4), "took {took:?}");
}

#[test]
fn a_follower_that_missed_a_snapshot_catches_up() {
    let mut cluster = Cluster::start("cluster-snapshot", &["--snapshot-entries", "20"]);
    let leader = cluster.leader(ELECTION);
    let follower = cluster.follower(leader);
    assert!(cluster.write_until_ok(leader, &create_deal("d1", 500), ELECTION).is_success());
    cluster.kill(follower);
    for n in 0..120 {
        let request = reserve("d1", &format!("u{n}"), &format!("k{n}"));
        assert!(cluster.write_until_ok(leader, &request, ELECTION).is_success());
    }
    cluster.start_node(follower);
    let (index, _) = cluster.converged(Duration::from_secs(20));
    assert!(index >= 121, "{index}");
    let deal = cluster.client(follower).get_json("/v1/deals/d1").expect("deal");
    assert_eq!(deal["held"], 120, "{deal}");
}

/// The kill loop: clients drive every node with keyed reserves, confirms and releases while
/// the leader (every fourth cycle a follower) is killed with SIGKILL and restarted. After each
/// cycle: every acknowledged change is there, nothing is oversold, and all replicas agree on
/// the state digest. Prints the failover times (kill to the first acknowledged write).
///
/// `CLUSTER_KILL_CYCLES` cycles (default 3 in `cargo test`); `scripts/cluster-kill-loop.sh N`
/// runs it with N cycles on a release build.
#[test]
fn kill_loop() {
    let cycles: u64 =
        std::env::var("CLUSTER_KILL_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let mut cluster = Cluster::start("cluster-kill-loop", &[]);
    let leader = cluster.leader(ELECTION);
    let stock = 1_000_000;
    // Holds must not expire during the loop: the check compares states with the ledger.
    let body = json!({ "id": "d1", "stream_id": "s1", "stock": stock,
                       "hold_ttl_ms": 3_600_000, "hold_ttl_ms_max": 3_600_000 });
    let create = Request::post("/v1/deals", "create-d1", &body);
    assert!(cluster.write_until_ok(leader, &create, ELECTION).is_success());
    // What the clients were told: hold id -> what was acknowledged last.
    let mut ledger: BTreeMap<String, &'static str> = BTreeMap::new();
    let mut failovers_ms = Vec::new();
    let mut op = 0u64;
    for cycle in 0..cycles {
        let leader = cluster.leader(ELECTION);
        let victim = if cycle % 4 == 3 { cluster.follower(leader) } else { leader };
        // Some traffic through every node before the kill.
        for _ in 0..30 {
            op += 1;
            drive(&cluster, op, &mut ledger);
        }
        cluster.kill(victim);
        let killed_at = Instant::now();
        // The first write acknowledged after the kill, sent to a survivor.
        let survivor = *cluster.nodes.keys().next().expect("a survivor");
        op += 1;
        let request = reserve("d1", &format!("u{op}"), &format!("k{op}"));
        let answer = cluster.write_until_ok(survivor, &request, ELECTION);
        assert!(answer.is_success(), "cycle {cycle}: {answer:?}");
        if victim == leader {
            failovers_ms.push(killed_at.elapsed().as_millis());
        }
        let hold_id = answer.json()["hold_id"].as_str().expect("hold id").to_owned();
        ledger.insert(hold_id, "held");
        for _ in 0..30 {
            op += 1;
            drive(&cluster, op, &mut ledger);
        }
        cluster.start_node(victim);
        cluster.leader(ELECTION);
        cluster.converged(Duration::from_secs(30));
        check(&cluster, &ledger, stock, cycle);
        eprintln!("cycle {cycle}: ok ({} holds acknowledged)", ledger.len());
    }
    failovers_ms.sort_unstable();
    let pick = |percent: usize| {
        let at = (failovers_ms.len().saturating_sub(1) * percent).div_ceil(100);
        failovers_ms.get(at).copied().unwrap_or(0)
    };
    println!(
        "kill loop: {cycles} cycles, {} acknowledged holds, 0 lost, 0 oversold; failover \
         (kill -9 of the leader to the first acknowledged write) over {} kills: p50 {} ms, \
         p99 {} ms, max {} ms",
        ledger.len(),
        failovers_ms.len(),
        pick(50),
        pick(99),
        failovers_ms.last().copied().unwrap_or(0)
    );
}

/// One client step on a node chosen by `op`: a new reserve, or a confirm or release of an
/// acknowledged hold. Only successes enter the ledger; a lost answer is retried with its key.
fn drive(cluster: &Cluster, op: u64, ledger: &mut BTreeMap<String, &'static str>) {
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    let node = ids[usize::try_from(op).unwrap_or(0) % ids.len()];
    let held: Vec<String> =
        ledger.iter().filter(|(_, s)| **s == "held").map(|(h, _)| h.clone()).collect();
    let (request, effect) = match (op % 5, held.first()) {
        (3, Some(hold)) => (
            Request::post(format!("/v1/holds/{hold}/confirm"), format!("c{op}"), &json!({})),
            Some((hold.clone(), "confirmed")),
        ),
        (4, Some(hold)) => (
            Request::post(format!("/v1/holds/{hold}/release"), format!("x{op}"), &json!({})),
            Some((hold.clone(), "released")),
        ),
        _ => (reserve("d1", &format!("u{op}"), &format!("k{op}")), None),
    };
    let answer = cluster.write_until_ok(node, &request, ELECTION);
    assert!(answer.is_success(), "op {op} on node {node}: {answer:?}");
    match effect {
        Some((hold, state)) => {
            ledger.insert(hold, state);
        }
        None => {
            let hold = answer.json()["hold_id"].as_str().expect("hold id").to_owned();
            ledger.insert(hold, "held");
        }
    }
}

/// Every acknowledged hold is in the state last acknowledged, on every node; the deal's
/// counters add up and never oversell.
///
/// Holds are read one by one only for a sample (every hold would make the loop quadratic:
/// every read is a read-index round trip); the counters check all of them in aggregate.
fn check(cluster: &Cluster, ledger: &BTreeMap<String, &'static str>, stock: u64, cycle: u64) {
    let step = (ledger.len() / 60).max(1);
    for id in cluster.nodes.keys() {
        let client = cluster.client(*id);
        for (hold, state) in ledger.iter().step_by(step).chain(ledger.iter().rev().take(20)) {
            let seen = client.get_json(&format!("/v1/holds/{hold}"));
            let seen = seen.unwrap_or_else(|| panic!("cycle {cycle}: node {id} lost {hold}"));
            assert_eq!(seen["state"], *state, "cycle {cycle}: node {id}: {hold}: {seen}");
        }
        let deal = client.get_json("/v1/deals/d1").expect("deal");
        let count = |field: &str| deal[field].as_u64().expect("a count");
        let (held, sold, available) = (count("held"), count("sold"), count("available"));
        assert_eq!(held + sold + available, stock, "cycle {cycle}: node {id}: {deal}");
        let acked = |state: &str| ledger.values().filter(|s| **s == state).count();
        let (acked_held, acked_sold) = (acked("held"), acked("confirmed"));
        let (held, sold) = (usize::try_from(held).unwrap(), usize::try_from(sold).unwrap());
        assert_eq!((held, sold), (acked_held, acked_sold), "cycle {cycle}: node {id}: {deal}");
    }
}

#[test]
fn a_node_is_added_and_another_removed() {
    let mut cluster = Cluster::start("cluster-membership", &[]);
    let leader = cluster.leader(ELECTION);
    assert!(cluster.write_until_ok(leader, &create_deal("d1", 10), ELECTION).is_success());
    assert!(cluster.write_until_ok(leader, &reserve("d1", "u1", "r1"), ELECTION).is_success());
    // Node 4 starts empty with every member in --peers (it does not form a cluster of its
    // own: only the smallest id forms one), then is added through any node.
    let port = free_port();
    cluster.peer_ports.insert(4, port);
    cluster.peers = format!("{},4=127.0.0.1:{port}", cluster.peers);
    cluster.start_node(4);
    let follower = cluster.follower(leader);
    let add = json!({ "id": 4, "peer_addr": format!("127.0.0.1:{port}") });
    let added = cluster.write_until_ok(
        follower,
        &Request::post("/v1/cluster/members", "a4", &add),
        ELECTION,
    );
    assert!(added.is_success(), "{added:?}");
    let voters = |status: &Value| {
        status["members"].as_array().expect("members").iter().filter(|m| m["voter"] == true).count()
    };
    assert_eq!(voters(&added.json()), 4, "{added:?}");
    cluster.converged(ELECTION);
    let deal = cluster.client(4).get_json("/v1/deals/d1").expect("node 4 has the deal");
    assert_eq!(deal["held"], 1);
    // Replace a dead node: a follower other than node 4 dies and is removed with the
    // command-line tool (through another node); the remaining three go on.
    let gone = *cluster.nodes.keys().find(|id| **id != leader && **id != 4).expect("a follower");
    cluster.kill(gone);
    let via = cluster.nodes[&4].base();
    let via = via.trim_start_matches("http://");
    let removed = cli(&["remove", "--node", via, "--id", &gone.to_string()]);
    assert!(removed.status.success(), "{removed:?}");
    let answer: Value = serde_json::from_slice(&removed.stdout).expect("the status as JSON");
    assert_eq!(voters(&answer), 3, "{answer}");
    // A bad request changes nothing, and the tool says so with a failing exit.
    let again = cli(&["remove", "--node", via, "--id", &gone.to_string()]);
    assert!(!again.status.success(), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stderr).contains("invalid_request"), "{again:?}");
    let status = cli(&["status", "--node", via]);
    assert!(status.status.success(), "{status:?}");
    let status: Value = serde_json::from_slice(&status.stdout).expect("the status as JSON");
    assert_eq!(voters(&status), 3, "{status}");
    let more = reserve("d1", "u2", "r2");
    assert!(cluster.write_until_ok(4, &more, ELECTION).is_success());
    cluster.converged(ELECTION);
    // A bad request changes nothing.
    let bad = Request::post("/v1/cluster/members", "bad", &json!({ "id": 0, "peer_addr": "x" }));
    assert_eq!(cluster.client(leader).send(&bad).error_code().as_deref(), Some("invalid_request"));
}

/// Replicas whose clocks are 500 ms ahead and behind make identical expiry decisions: only the
/// leader decides an expiry, it is logged with the leader's stamp, and a new leader never
/// reads a clock earlier than the newest stamp it applied.
#[test]
fn skewed_clocks_make_identical_expiry_decisions() {
    let mut cluster = Cluster::start_skewed("cluster-skew", &[(1, 0), (2, 500), (3, -500)]);
    let leader = cluster.leader(ELECTION);
    let body = json!({ "id": "d1", "stream_id": "s1", "stock": 10, "hold_ttl_ms": 1000 });
    assert!(cluster
        .write_until_ok(leader, &Request::post("/v1/deals", "c", &body), ELECTION)
        .is_success());
    let mut holds = Vec::new();
    for n in 0..3 {
        let answer = cluster.write_until_ok(
            leader,
            &reserve("d1", &format!("u{n}"), &format!("k{n}")),
            ELECTION,
        );
        holds.push(answer.json()["hold_id"].as_str().expect("hold id").to_owned());
    }
    cluster.kill(leader);
    let new_leader = cluster.leader(ELECTION);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let deal = cluster.client(new_leader).get_json("/v1/deals/d1").expect("deal");
        if deal["held"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "never expired: {deal}");
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.start_node(leader);
    cluster.converged(ELECTION);
    // The same decisions everywhere: each hold expired at the same instant on every replica,
    // never before its expiry time.
    for hold in &holds {
        let seen: Vec<Value> = cluster
            .nodes
            .keys()
            .map(|id| cluster.client(*id).get_json(&format!("/v1/holds/{hold}")).expect("hold"))
            .collect();
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
        assert_eq!(seen[0]["state"], "expired");
        assert!(seen[0]["resolved_at"].as_str() >= seen[0]["expires_at"].as_str(), "{}", seen[0]);
    }
}

/// A backup taken from a running cluster (through a follower) restores into a new cluster on
/// other ports: it holds every change acknowledged before the backup and none after, keyed
/// retries get the same answers, and the new cluster takes writes.
#[test]
fn a_backup_restores_into_a_new_cluster() {
    let mut old = Cluster::start("cluster-backup", &[]);
    let leader = old.leader(ELECTION);
    assert!(old.write_until_ok(leader, &create_deal("d1", 10), ELECTION).is_success());
    let before = reserve("d1", "u1", "k1");
    let acknowledged = old.write_until_ok(leader, &before, ELECTION);
    assert!(acknowledged.is_success(), "{acknowledged:?}");
    let backup = old.scratch.join("backup.bin");
    let via = old.nodes[&old.follower(leader)].base();
    let taken =
        cli(&["backup", "--node", via.trim_start_matches("http://"), "--out", &path(&backup)]);
    assert!(taken.status.success(), "{taken:?}");
    // A second backup to the same file is refused: a backup is never overwritten in place.
    let again =
        cli(&["backup", "--node", via.trim_start_matches("http://"), "--out", &path(&backup)]);
    assert!(!again.status.success(), "{again:?}");
    let after = reserve("d1", "u2", "k2");
    assert!(old.write_until_ok(leader, &after, ELECTION).is_success());
    for id in 1..=NODES {
        old.kill(id);
    }

    let mut new = Cluster::new("cluster-restored", &[], &[]);
    // `livestock cluster restore` of `from` into `dir` as node `id` of the new cluster.
    let restore = |from: &std::path::Path, dir: &str, id: u64, extra: &[&str]| {
        let (from, id) = (path(from), id.to_string());
        let mut args =
            vec!["restore", "--from", &from, "--data-dir", dir, "--node-id", &id, "--peers"];
        args.push(&new.peers);
        args.extend_from_slice(extra);
        cli(&args)
    };
    for id in 1..=NODES {
        let restored = restore(&backup, &path(&new.scratch.join(&format!("n{id}"))), id, &[]);
        assert!(restored.status.success(), "{restored:?}");
    }
    // A restore writes only a new node: a second one into the same directory is refused.
    let twice = restore(&backup, &path(&new.scratch.join("n1")), 1, &[]);
    assert!(!twice.status.success(), "{twice:?}");
    assert!(String::from_utf8_lossy(&twice.stderr).contains("not empty"), "{twice:?}");
    // A backup taken under another secret, or a damaged one, is refused and writes nothing.
    let elsewhere = path(&new.scratch.join("elsewhere"));
    let secret = ["--cluster-secret", "another-cluster-secret-0123"];
    let refused = restore(&backup, &elsewhere, 1, &secret);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("another cluster secret"),
        "{refused:?}"
    );
    let mut damaged = std::fs::read(&backup).expect("the backup");
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    let damaged_path = new.scratch.join("damaged.bin");
    std::fs::write(&damaged_path, damaged).expect("write");
    let refused = restore(&damaged_path, &elsewhere, 1, &[]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("checksum"), "{refused:?}");
    let raft = new.scratch.join("elsewhere").join("raft");
    let left = std::fs::read_dir(&raft).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "a refused restore wrote files in {}", raft.display());
    for id in 1..=NODES {
        new.start_node(id);
    }
    let leader = new.leader(ELECTION);
    let deal = new.client(leader).get_json("/v1/deals/d1").expect("the restored deal");
    assert_eq!((deal["held"].as_u64(), deal["available"].as_u64()), (Some(1), Some(9)), "{deal}");
    let replay = new.write_until_ok(new.follower(leader), &before, ELECTION);
    assert_eq!(replay, acknowledged, "a keyed retry after the restore gets the same answer");
    let status = new.status(leader).expect("status");
    let addresses: Vec<&str> = status["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["peer_addr"].as_str())
        .collect();
    let expected: Vec<String> = new.peer_ports.values().map(|p| format!("127.0.0.1:{p}")).collect();
    assert_eq!(addresses, expected, "the new cluster's members are its own");
    assert!(new.write_until_ok(leader, &reserve("d1", "u3", "k3"), ELECTION).is_success());
    new.converged(ELECTION);
}

fn path(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A leader killed and restarted before anyone else was elected does not lead its old term
/// again: that term's undecided tail belongs to the process that died (see `open.rs`,
/// `enable_leader_restore`). Long election timeouts give the restart time to beat an election.
#[test]
fn a_restarted_leader_does_not_lead_its_old_term() {
    let mut cluster = Cluster::start("cluster-restart", &["--election-timeout-min-ms", "1500"]);
    let leader = cluster.leader(ELECTION);
    assert!(cluster.write_until_ok(leader, &create_deal("d1", 10), ELECTION).is_success());
    let term = cluster.status(leader).expect("status")["term"].as_u64().expect("a term");
    cluster.kill(leader);
    cluster.start_node(leader);
    let next = cluster.leader(ELECTION);
    let next_term = cluster.status(next).expect("status")["term"].as_u64().expect("a term");
    assert!(next_term > term, "node {next} leads term {next_term}, the killed leader's was {term}");
    assert!(cluster.write_until_ok(next, &reserve("d1", "u1", "k1"), ELECTION).is_success());
    cluster.converged(ELECTION);
}

/// A waitlist and a draw through a cluster: joins forwarded by a follower, offers decided by
/// the leader and replicated, a draw done by the leader, and after the leader's death the new
/// one has every entry, offer and the draw's reveal, identical on every node.
#[test]
fn waitlists_and_draws_are_replicated_and_survive_the_leader() {
    let mut cluster = Cluster::start("cluster-waitlist", &[]);
    let leader = cluster.leader(ELECTION);
    let follower = cluster.follower(leader);
    let body = json!({ "id": "w", "stock": 1, "waitlist_max": 10, "hold_ttl_ms": 60_000 });
    assert!(cluster
        .write_until_ok(leader, &Request::post("/v1/deals", "cw", &body), ELECTION)
        .is_success());
    let first = cluster.write_until_ok(follower, &reserve("w", "a", "ra"), ELECTION);
    let first_hold = first.json()["hold_id"].as_str().expect("a hold").to_owned();
    let join = |user: &str| {
        let body = json!({ "user_id": user, "qty": 1, "waitlist": true });
        Request::post("/v1/deals/w/reserve", format!("j{user}"), &body)
    };
    // A follower does not answer sold_out itself to a request that would join: it forwards.
    let b = cluster.write_until_ok(follower, &join("b"), ELECTION);
    assert_eq!(b.json()["state"], "waiting", "{b:?}");
    let entry_b = b.json()["entry_id"].as_str().expect("entry").to_owned();
    let c = cluster.write_until_ok(follower, &join("c"), ELECTION);
    let entry_c = c.json()["entry_id"].as_str().expect("entry").to_owned();
    let release = Request::post(format!("/v1/holds/{first_hold}/release"), "rel", &json!({}));
    assert!(cluster.write_until_ok(follower, &release, ELECTION).is_success());

    // A draw too: it opens now and closes in 2 s; the leader draws.
    let starts = now_plus_ms(200);
    let body = json!({ "id": "lucky", "stock": 2, "starts_at": starts, "draw_window_ms": 2_000 });
    assert!(cluster
        .write_until_ok(leader, &Request::post("/v1/deals", "cl", &body), ELECTION)
        .is_success());
    std::thread::sleep(Duration::from_millis(300));
    for n in 0..6 {
        let entered = cluster.write_until_ok(
            follower,
            &reserve("lucky", &format!("v{n}"), &format!("l{n}")),
            ELECTION,
        );
        assert_eq!(entered.json()["state"], "entered", "{entered:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let drawn = loop {
        let draw = cluster.client(leader).get_json("/v1/deals/lucky/draw").expect("the draw");
        if draw["state"] == "drawn" {
            break draw;
        }
        assert!(Instant::now() < deadline, "never drawn: {draw}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(drawn["winners"].as_array().map(Vec::len), Some(2));
    cluster.converged(ELECTION);

    cluster.kill(leader);
    let new_leader = cluster.leader(ELECTION);
    let b_now = cluster.client(new_leader).get_json(&format!("/v1/waitlist/{entry_b}")).expect("b");
    assert_eq!(b_now["state"], "offered", "{b_now}");
    let offer = b_now["hold_id"].as_str().expect("its offer").to_owned();
    let hold = cluster.client(new_leader).get_json(&format!("/v1/holds/{offer}")).expect("offer");
    assert_eq!((hold["origin"].clone(), hold["user_id"].clone()), (json!("waitlist"), json!("b")));
    let c_now = cluster.client(new_leader).get_json(&format!("/v1/waitlist/{entry_c}")).expect("c");
    assert_eq!(c_now["position"], 1);
    let again = cluster.client(new_leader).get_json("/v1/deals/lucky/draw").expect("the draw");
    assert_eq!(again, drawn, "the reveal is the same after the failover");
    // b gives the offer up on the new leader: c is offered the unit.
    let cancel = Request::post(format!("/v1/waitlist/{entry_b}/cancel"), "cb", &json!({}));
    assert!(cluster.write_until_ok(new_leader, &cancel, ELECTION).is_success());
    let c_now = cluster.client(new_leader).get_json(&format!("/v1/waitlist/{entry_c}")).expect("c");
    assert_eq!(c_now["state"], "offered", "{c_now}");
    cluster.start_node(leader);
    cluster.converged(ELECTION);
}

/// Now plus `ms`, as RFC 3339 UTC (the processes' clocks are this machine's).
fn now_plus_ms(ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    let at = i64::try_from(now).expect("ms fit") + i64::try_from(ms).expect("ms fit");
    let at = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(at).expect("in range");
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
