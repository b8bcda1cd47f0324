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
}

impl Cluster {
    fn start(label: &str, extra: &[&str]) -> Cluster {
        let scratch = Scratch::new(label);
        let peer_ports: BTreeMap<u64, u16> = (1..=NODES).map(|id| (id, free_port())).collect();
        let peers = peer_ports
            .iter()
            .map(|(id, port)| format!("{id}=127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let extra = extra.iter().map(|s| (*s).to_owned()).collect();
        let mut cluster = Cluster { scratch, peers, peer_ports, nodes: BTreeMap::new(), extra };
        for id in 1..=NODES {
            cluster.start_node(id);
        }
        cluster
    }

    fn start_node(&mut self, id: u64) {
        let data = self.scratch.join(&format!("n{id}"));
        let log = self.scratch.join(&format!("n{id}.log"));
        let peer_listen = format!("127.0.0.1:{}", self.peer_ports[&id]);
        let id_text = id.to_string();
        let mut args = vec![
            "--node-id",
            id_text.as_str(),
            "--peer-listen",
            peer_listen.as_str(),
            "--peers",
            self.peers.as_str(),
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
