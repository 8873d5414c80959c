//! `alaska.shared`: one dictionary per worker process, shared by all its
//! Lua VMs (OpenResty's `lua_shared_dict` is the model).
//!
//! Values are strings, integers, floats and booleans. Every operation takes
//! one lock for as long as a hash-map operation lasts, so `incr` from many
//! VMs at once is exact. The dictionary is bounded in bytes (key, value and
//! a fixed per-entry overhead): when a `set` would not fit, expired entries
//! are dropped first, then the least recently used ones, until it fits (a
//! value larger than the whole dictionary is an error). Time is passed in,
//! so expiry is tested without sleeping.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bytes counted per entry besides its key and value (the map's and the
/// LRU index's bookkeeping, roughly).
pub const ENTRY_OVERHEAD: usize = 64;

/// A value in the dictionary.
#[derive(Debug, Clone, PartialEq)]
pub enum SharedValue {
    /// A Lua string (bytes).
    Str(Vec<u8>),
    /// A Lua integer.
    Int(i64),
    /// A Lua float.
    Num(f64),
    /// A Lua boolean.
    Bool(bool),
}

impl SharedValue {
    fn size(&self) -> usize {
        match self {
            SharedValue::Str(s) => s.len(),
            _ => 8,
        }
    }
}

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SharedError {
    /// The entry alone is larger than the dictionary.
    #[error("value too large for alaska.shared ({size} bytes with its key; the dictionary holds {limit})")]
    TooLarge {
        /// The entry's size.
        size: usize,
        /// The dictionary's size.
        limit: usize,
    },
    /// `incr` of a missing key without an initial value.
    #[error("not found")]
    NotFound,
    /// `incr` of a value that is not a number.
    #[error("not a number")]
    NotANumber,
}

#[derive(Debug)]
struct Entry {
    value: SharedValue,
    expires: Option<Instant>,
    /// Position in the LRU index.
    used: u64,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Vec<u8>, Entry>,
    /// Last use -> key, oldest first.
    lru: BTreeMap<u64, Vec<u8>>,
    bytes: usize,
    tick: u64,
}

impl Inner {
    fn entry_size(key: &[u8], value: &SharedValue) -> usize {
        key.len() + value.size() + ENTRY_OVERHEAD
    }

    fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let e = self.map.remove(key)?;
        self.lru.remove(&e.used);
        self.bytes -= Inner::entry_size(key, &e.value);
        Some(e)
    }

    /// The live entry for `key`, marked as used; an expired one is removed.
    fn live(&mut self, key: &[u8], now: Instant) -> Option<&mut Entry> {
        if self
            .map
            .get(key)
            .is_some_and(|e| e.expires.is_some_and(|t| t <= now))
        {
            self.remove(key);
            return None;
        }
        self.tick += 1;
        let tick = self.tick;
        let e = self.map.get_mut(key)?;
        self.lru.remove(&e.used);
        e.used = tick;
        self.lru.insert(tick, key.to_vec());
        Some(e)
    }

    /// Makes room for `need` more bytes: expired entries first, then the
    /// least recently used.
    fn make_room(&mut self, need: usize, limit: usize, now: Instant) {
        if self.bytes + need <= limit {
            return;
        }
        let expired: Vec<Vec<u8>> = self
            .map
            .iter()
            .filter(|(_, e)| e.expires.is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            self.remove(&k);
        }
        while self.bytes + need > limit {
            let Some((_, key)) = self.lru.pop_first() else {
                break;
            };
            if let Some(e) = self.map.remove(&key) {
                self.bytes -= Inner::entry_size(&key, &e.value);
            }
        }
    }

    fn insert(&mut self, key: &[u8], value: SharedValue, expires: Option<Instant>) {
        self.tick += 1;
        self.bytes += Inner::entry_size(key, &value);
        self.lru.insert(self.tick, key.to_vec());
        self.map.insert(
            key.to_vec(),
            Entry {
                value,
                expires,
                used: self.tick,
            },
        );
    }
}

/// The dictionary. Cheap to share: wrap it in an `Arc`.
#[derive(Debug)]
pub struct SharedDict {
    inner: Mutex<Inner>,
    limit: usize,
}

fn deadline(now: Instant, ttl: Option<Duration>) -> Option<Instant> {
    ttl.filter(|t| !t.is_zero())
        .and_then(|t| now.checked_add(t))
}

impl SharedDict {
    /// An empty dictionary of at most `limit` bytes.
    pub fn new(limit: usize) -> SharedDict {
        SharedDict {
            inner: Mutex::new(Inner::default()),
            limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map half-updated
        // in a way that matters more than losing the dictionary would.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value of `key`, unless missing or expired.
    pub fn get(&self, key: &[u8], now: Instant) -> Option<SharedValue> {
        self.lock().live(key, now).map(|e| e.value.clone())
    }

    /// Sets `key` (`None` deletes it), with a time to live. Returns whether
    /// other entries were evicted to make room.
    pub fn set(
        &self,
        key: &[u8],
        value: Option<SharedValue>,
        ttl: Option<Duration>,
        now: Instant,
    ) -> Result<bool, SharedError> {
        let mut d = self.lock();
        d.remove(key);
        let Some(value) = value else {
            return Ok(false);
        };
        let size = Inner::entry_size(key, &value);
        if size > self.limit {
            return Err(SharedError::TooLarge {
                size,
                limit: self.limit,
            });
        }
        let before = d.map.len();
        d.make_room(size, self.limit, now);
        let evicted = d.map.len() < before;
        d.insert(key, value, deadline(now, ttl));
        Ok(evicted)
    }

    /// Sets `key` only if it is absent (or expired). Returns whether it
    /// was added.
    pub fn add(
        &self,
        key: &[u8],
        value: SharedValue,
        ttl: Option<Duration>,
        now: Instant,
    ) -> Result<bool, SharedError> {
        let mut d = self.lock();
        if d.live(key, now).is_some() {
            return Ok(false);
        }
        let size = Inner::entry_size(key, &value);
        if size > self.limit {
            return Err(SharedError::TooLarge {
                size,
                limit: self.limit,
            });
        }
        d.make_room(size, self.limit, now);
        d.insert(key, value, deadline(now, ttl));
        Ok(true)
    }

    /// Adds `by` to the number at `key`, atomically; a missing key starts
    /// from `init` when given. Returns the new value.
    pub fn incr(
        &self,
        key: &[u8],
        by: SharedValue,
        init: Option<SharedValue>,
        now: Instant,
    ) -> Result<SharedValue, SharedError> {
        let mut d = self.lock();
        let current = match d.live(key, now) {
            Some(e) => e.value.clone(),
            None => init.ok_or(SharedError::NotFound)?,
        };
        let sum = match (current, by) {
            (SharedValue::Int(a), SharedValue::Int(b)) => match a.checked_add(b) {
                Some(s) => SharedValue::Int(s),
                None => SharedValue::Num(a as f64 + b as f64),
            },
            (SharedValue::Int(a), SharedValue::Num(b)) => SharedValue::Num(a as f64 + b),
            (SharedValue::Num(a), SharedValue::Int(b)) => SharedValue::Num(a + b as f64),
            (SharedValue::Num(a), SharedValue::Num(b)) => SharedValue::Num(a + b),
            _ => return Err(SharedError::NotANumber),
        };
        let expires = d.map.get(key).and_then(|e| e.expires);
        d.remove(key);
        let size = Inner::entry_size(key, &sum);
        d.make_room(size, self.limit, now);
        d.insert(key, sum.clone(), expires);
        Ok(sum)
    }

    /// Removes `key`.
    pub fn delete(&self, key: &[u8]) {
        self.lock().remove(key);
    }

    /// The keys of live entries, in no particular order.
    pub fn keys(&self, now: Instant) -> Vec<Vec<u8>> {
        let d = self.lock();
        d.map
            .iter()
            .filter(|(_, e)| e.expires.is_none_or(|t| t > now))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Bytes in use (as counted against the limit).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Entries held (including expired ones not yet dropped).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SharedValue::*;

    fn s(v: &str) -> SharedValue {
        Str(v.as_bytes().to_vec())
    }

    #[test]
    fn set_get_delete_and_nil_deletes() {
        let d = SharedDict::new(1 << 20);
        let t = Instant::now();
        d.set(b"a", Some(s("x")), None, t).unwrap();
        d.set(b"n", Some(Int(3)), None, t).unwrap();
        d.set(b"b", Some(Bool(false)), None, t).unwrap();
        assert_eq!(d.get(b"a", t), Some(s("x")));
        assert_eq!(d.get(b"n", t), Some(Int(3)));
        assert_eq!(d.get(b"b", t), Some(Bool(false)));
        d.set(b"a", None, None, t).unwrap();
        assert_eq!(d.get(b"a", t), None);
        d.delete(b"n");
        assert_eq!(d.get(b"n", t), None);
        let mut keys = d.keys(t);
        keys.sort();
        assert_eq!(keys, vec![b"b".to_vec()]);
    }

    #[test]
    fn entries_expire_after_their_ttl() {
        let d = SharedDict::new(1 << 20);
        let t = Instant::now();
        d.set(b"k", Some(s("v")), Some(Duration::from_millis(100)), t)
            .unwrap();
        assert_eq!(d.get(b"k", t + Duration::from_millis(99)), Some(s("v")));
        assert!(d.keys(t + Duration::from_millis(100)).is_empty());
        assert_eq!(d.get(b"k", t + Duration::from_millis(100)), None);
        assert!(d.is_empty(), "an expired entry read is dropped");
        // add succeeds over an expired entry, not over a live one.
        d.set(b"k", Some(s("v")), Some(Duration::from_millis(10)), t)
            .unwrap();
        assert_eq!(d.add(b"k", s("w"), None, t), Ok(false));
        assert_eq!(
            d.add(b"k", s("w"), None, t + Duration::from_millis(10)),
            Ok(true)
        );
        assert_eq!(d.get(b"k", t + Duration::from_secs(99)), Some(s("w")));
    }

    #[test]
    fn incr_is_numeric_and_starts_from_init() {
        let d = SharedDict::new(1 << 20);
        let t = Instant::now();
        assert_eq!(d.incr(b"c", Int(1), None, t), Err(SharedError::NotFound));
        assert_eq!(d.incr(b"c", Int(1), Some(Int(10)), t), Ok(Int(11)));
        assert_eq!(d.incr(b"c", Int(-2), None, t), Ok(Int(9)));
        assert_eq!(d.incr(b"c", Num(0.5), None, t), Ok(Num(9.5)));
        d.set(b"s", Some(s("x")), None, t).unwrap();
        assert_eq!(d.incr(b"s", Int(1), None, t), Err(SharedError::NotANumber));
        d.set(b"max", Some(Int(i64::MAX)), None, t).unwrap();
        assert_eq!(
            d.incr(b"max", Int(1), None, t),
            Ok(Num(i64::MAX as f64 + 1.0))
        );
    }

    #[test]
    fn a_full_dictionary_evicts_expired_then_least_recently_used() {
        let entry = 1 + 10 + ENTRY_OVERHEAD;
        let d = SharedDict::new(entry * 3);
        let t = Instant::now();
        let ten = || Some(s("0123456789"));
        d.set(b"a", ten(), None, t).unwrap();
        d.set(b"b", ten(), Some(Duration::from_millis(5)), t)
            .unwrap();
        d.set(b"c", ten(), None, t).unwrap();
        assert_eq!(d.bytes(), entry * 3);
        // "a" is used, so "c" is now the least recently used; "b" expired.
        d.get(b"a", t);
        let later = t + Duration::from_millis(10);
        let sorted = |d: &SharedDict| {
            let mut k = d.keys(later);
            k.sort();
            k
        };
        assert_eq!(d.set(b"d", ten(), None, later), Ok(true));
        // keys() does not count as a use.
        assert_eq!(
            sorted(&d),
            vec![b"a".to_vec(), b"c".to_vec(), b"d".to_vec()],
            "the expired one went first"
        );
        assert_eq!(d.set(b"e", ten(), None, later), Ok(true));
        assert_eq!(
            sorted(&d),
            vec![b"a".to_vec(), b"d".to_vec(), b"e".to_vec()],
            "then the least recently used"
        );
        assert!(d.bytes() <= entry * 3);
        assert!(matches!(
            d.set(b"big", Some(Str(vec![0; entry * 3])), None, later),
            Err(SharedError::TooLarge { .. })
        ));
    }

    #[test]
    fn concurrent_incr_is_exact() {
        let d = std::sync::Arc::new(SharedDict::new(1 << 20));
        let t = Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let d = d.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        d.incr(b"n", Int(1), Some(Int(0)), t).unwrap();
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert_eq!(d.get(b"n", t), Some(Int(4000)));
    }
}
