//! Guards against a full disk (real ENOSPC) losing acknowledged reserves or leaving a live zombie.
//!
//! Needs root (to mount a 1 MiB tmpfs); elsewhere the test says why it skipped and passes.
//! tmpfs never fails an fsync: the error comes from `write()`, which is what poisons the log.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a failed test")]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{
    assert_deal_balanced, str_field, u64_field, verify, Answer, Client, Request, Scratch, Server,
};

const WORKERS: usize = 4;
const STOCK: u64 = 1_000_000;
/// A server that cannot write must be gone within this long.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// 1 MiB holds a few thousand of our records: past this many requests, ENOSPC never came.
const REQUESTS_MAX: u64 = 100_000;

/// A tmpfs mounted for the test, unmounted on drop (after the server that uses it is gone).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Tmpfs { path: path.to_path_buf() })
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()
            .expect("run mount -o remount");
        assert!(status.success(), "remount of {} failed: {status}", self.path.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// What the reserve traffic learnt: the holds acknowledged, and how many answers were in doubt
/// (lost, or 503: a batch can be partly written before the write fails).
#[derive(Default)]
struct Outcomes {
    acked: Vec<String>,
    in_doubt: u64,
    sent: u64,
}

/// Reserves one unit at a time, with long ids so that each log record is big, until the server
/// refuses for want of storage or stops answering.
fn hammer(client: &Client, outcomes: &Mutex<Outcomes>, worker: usize) {
    let padding = "x".repeat(100);
    for n in 0..REQUESTS_MAX {
        let user = format!("w{worker}-{n}-{padding}");
        let key = format!("k{worker}-{n}-{padding}");
        let request =
            Request::post("/v1/deals/big/reserve", key, &json!({ "user_id": user, "qty": 1 }));
        let answer = client.send(&request);
        let mut outcomes = outcomes.lock().expect("outcomes lock");
        outcomes.sent += 1;
        match &answer {
            Answer::Reply { status: 201, .. } => {
                outcomes.acked.push(str_field(&answer.json(), "hold_id"));
            }
            Answer::Reply { status: 503, .. } | Answer::Lost(_) => {
                if let Some(code) = answer.error_code() {
                    assert_eq!(code, "storage_unavailable", "{answer:?}");
                }
                outcomes.in_doubt += 1;
                return;
            }
            other => panic!("unexpected answer to a reserve: {other:?}"),
        }
    }
    panic!("{REQUESTS_MAX} reserves and the 1 MiB disk is not full");
}

#[test]
fn enospc_poisons_the_log_exits_and_recovery_keeps_exactly_the_acknowledged_reserves() {
    let scratch = Scratch::new("full-disk");
    let mount_point = Scratch::new("full-disk-mnt");
    let tmpfs = match Tmpfs::mount(mount_point.path(), "1m") {
        Ok(tmpfs) => tmpfs,
        Err(reason) => {
            eprintln!(
                "SKIPPED full_disk: needs root and tmpfs mounts to make a real ENOSPC: {reason}"
            );
            return;
        }
    };
    let data = mount_point.join("data");
    let log = scratch.join("server.log");
    let args = ["--worker-threads", "2"];

    let mut server = Server::start(&data, &log, &args);
    let client = Client::new(&server.base());
    let create = Request::post("/v1/deals", "create-big", &json!({ "id": "big", "stock": STOCK }));
    let created = client.send(&create);
    assert!(matches!(created, Answer::Reply { status: 201, .. }), "{created:?}");

    let started = Instant::now();
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let (client, outcomes) = (client.clone(), outcomes.clone());
            std::thread::spawn(move || hammer(&client, &outcomes, worker))
        })
        .collect();
    for worker in workers {
        if let Err(panic) = worker.join() {
            std::panic::resume_unwind(panic);
        }
    }
    let filled = started.elapsed();

    // The poisoned log makes the process exit, non-zero, by itself.
    let Some(status) = server.wait_timeout(EXIT_TIMEOUT) else {
        panic!("still running {EXIT_TIMEOUT:?} after its log failed:\n{}", server.log_tail());
    };
    assert!(!status.success(), "a server whose log failed exited with {status}");
    let stderr = server.log_tail();
    assert!(stderr.contains("poisoned"), "the exit does not say why:\n{stderr}");
    drop(server);

    // Room again: recovery reads what really reached the disk.
    tmpfs.resize("64m");
    let (status, report) = verify(&data);
    assert!(status.success(), "verify after ENOSPC: {status}\n{report}");
    let server = Server::start(&data, &log, &args);
    let client = Client::new(&server.base());
    let outcomes = outcomes.lock().expect("outcomes lock");
    for hold_id in &outcomes.acked {
        let Some(hold) = client.get_json(&format!("/v1/holds/{hold_id}")) else {
            panic!("acknowledged hold {hold_id} is gone after ENOSPC and recovery");
        };
        assert_eq!(hold["state"], json!("held"), "{hold}");
    }
    let deal = client.get_json("/v1/deals/big").expect("the deal survives");
    assert_deal_balanced(&deal);
    let held = u64_field(&deal, "held");
    let acked = outcomes.acked.len() as u64;
    assert!(
        (acked..=acked + outcomes.in_doubt).contains(&held),
        "held {held} units; acknowledged {acked}, in doubt {}: {deal}",
        outcomes.in_doubt
    );
    let after = client.send(&Request::post(
        "/v1/deals/big/reserve",
        "after-recovery",
        &json!({ "user_id": "after", "qty": 1 }),
    ));
    assert!(matches!(after, Answer::Reply { status: 201, .. }), "after recovery: {after:?}");
    println!(
        "full disk: {} reserves sent, {acked} acknowledged, {} in doubt, {held} held after \
         recovery; disk full after {} ms\n{report}",
        outcomes.sent,
        outcomes.in_doubt,
        filled.as_millis()
    );
}
