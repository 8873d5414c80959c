//! Compares fjall and redb on the workload of alaska-broker's durable
//! storage, as the broker would drive it: one write transaction per loop
//! turn, holding the new requests of that turn (an insert each, ~120 bytes:
//! a 64-byte payload plus the request's header fields) and the requests
//! confirmed in that turn (a delete each), then a commit that is either
//! flushed to the OS (survives a process crash) or fsynced.
//!
//! Scenarios, each on a fresh store in a temporary directory:
//! - pipeline: TURNS turns of K inserts and K deletes of the previous
//!   turn's keys (a worker keeping up; the store stays near-empty);
//! - backlog: 100,000 inserts in turns of 100 (no worker), then 100,000
//!   deletes in turns of 100 (a worker drains the queue);
//! - recovery: after the pipeline and a backlog of 100,000 left in place,
//!   reopen the store and read everything back in key order (broker start).
//!
//! redb's only crash-safe commit is `Durability::Immediate` (fsync): its
//! `Durability::None` commits live in the process until the next durable
//! one, so they are lost on `kill -9`. It is measured for information.

use std::path::Path;
use std::time::{Duration, Instant};

const VALUE: usize = 120;

trait Store {
    fn name(&self) -> String;
    /// One turn: inserts then deletes, one atomic commit.
    fn turn(&mut self, inserts: &[u64], deletes: &[u64]);
    /// Reopens the store and counts what is there, in key order.
    fn reopen_and_scan(self: Box<Self>, dir: &Path) -> (usize, Duration);
}

fn value(k: u64) -> Vec<u8> {
    let mut v = vec![0x5a; VALUE];
    v[..8].copy_from_slice(&k.to_be_bytes());
    v
}

// ----- fjall ------------------------------------------------------------

struct Fjall {
    db: fjall::Database,
    ks: fjall::Keyspace,
    sync: bool,
}

impl Fjall {
    fn open(dir: &Path, sync: bool) -> Fjall {
        let db = fjall::Database::builder(dir).open().unwrap();
        let ks = db
            .keyspace("requests", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        Fjall { db, ks, sync }
    }
}

impl Store for Fjall {
    fn name(&self) -> String {
        format!(
            "fjall 3.1, {}",
            if self.sync { "fdatasync per turn" } else { "to OS per turn" }
        )
    }
    fn turn(&mut self, inserts: &[u64], deletes: &[u64]) {
        let mut b = self.db.batch();
        for &k in inserts {
            b.insert(&self.ks, k.to_be_bytes(), value(k));
        }
        for &k in deletes {
            b.remove(&self.ks, k.to_be_bytes());
        }
        b.commit().unwrap();
        if self.sync {
            self.db.persist(fjall::PersistMode::SyncData).unwrap();
        }
    }
    fn reopen_and_scan(self: Box<Self>, dir: &Path) -> (usize, Duration) {
        drop(self);
        let t = Instant::now();
        let again = Fjall::open(dir, false);
        let n = again.ks.iter().map(|kv| kv.into_inner().unwrap()).count();
        (n, t.elapsed())
    }
}

// ----- redb -------------------------------------------------------------

const TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("requests");

struct Redb {
    db: redb::Database,
    durable: bool,
}

impl Redb {
    fn open(dir: &Path, durable: bool) -> Redb {
        let db = redb::Database::create(dir.join("store.redb")).unwrap();
        Redb { db, durable }
    }
}

impl Store for Redb {
    fn name(&self) -> String {
        format!(
            "redb 4.6, {}",
            if self.durable { "Immediate (fsync) per turn" } else { "None per turn (NOT crash-safe)" }
        )
    }
    fn turn(&mut self, inserts: &[u64], deletes: &[u64]) {
        let mut tx = self.db.begin_write().unwrap();
        if !self.durable {
            tx.set_durability(redb::Durability::None).unwrap();
        }
        {
            let mut t = tx.open_table(TABLE).unwrap();
            for &k in inserts {
                t.insert(k, value(k).as_slice()).unwrap();
            }
            for &k in deletes {
                t.remove(k).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    fn reopen_and_scan(self: Box<Self>, dir: &Path) -> (usize, Duration) {
        // Make the last commits durable as a clean stop would.
        let mut tx = self.db.begin_write().unwrap();
        tx.set_durability(redb::Durability::Immediate).unwrap();
        tx.commit().unwrap();
        drop(self);
        let t = Instant::now();
        let again = Redb::open(dir, true);
        let rx = redb::ReadableDatabase::begin_read(&again.db).unwrap();
        let table = rx.open_table(TABLE).unwrap();
        let n = redb::ReadableTable::iter(&table).unwrap().count();
        (n, t.elapsed())
    }
}

// ----- driver -----------------------------------------------------------

fn run(make: &dyn Fn(&Path) -> Box<dyn Store>, turns: u64, k: u64) {
    let dir = tempfile::tempdir_in(std::env::var("STORE_DIR").unwrap_or_else(|_| ".".into()))
        .unwrap();
    let mut s = make(dir.path());
    let name = s.name();
    let mut next = 0u64;
    let mut prev: Vec<u64> = Vec::new();
    let t = Instant::now();
    for _ in 0..turns {
        let ins: Vec<u64> = (next..next + k).collect();
        next += k;
        s.turn(&ins, &prev);
        prev = ins;
    }
    s.turn(&[], &prev);
    let pipeline = t.elapsed();
    let t = Instant::now();
    let backlog: Vec<u64> = (next..next + 100_000).collect();
    for chunk in backlog.chunks(100) {
        s.turn(chunk, &[]);
    }
    let fill = t.elapsed();
    let (n, reopen) = s.reopen_and_scan(dir.path());
    assert_eq!(n, 100_000);
    let mut s = make(dir.path());
    let t = Instant::now();
    for chunk in backlog.chunks(100) {
        s.turn(&[], chunk);
    }
    let drain = t.elapsed();
    let per_s = |ops: u64, d: Duration| (ops as f64 / d.as_secs_f64()) as u64;
    println!(
        "{name:<44} pipeline k={k:<3} {:>8} req/s ({:>6} turns/s) | backlog fill {:>7} req/s, drain {:>7} req/s | reopen+scan 100k {:>5} ms",
        per_s(turns * k, pipeline),
        per_s(turns, pipeline),
        per_s(100_000, fill),
        per_s(100_000, drain),
        reopen.as_millis()
    );
}

fn main() {
    let turns: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    for k in [1u64, 10, 100] {
        // Fewer turns when each one fsyncs, so a run stays short.
        run(&|d| Box::new(Fjall::open(d, false)), turns * 5, k);
        run(&|d| Box::new(Fjall::open(d, true)), turns, k);
        run(&|d| Box::new(Redb::open(d, true)), turns, k);
        run(&|d| Box::new(Redb::open(d, false)), turns * 5, k);
    }
}
