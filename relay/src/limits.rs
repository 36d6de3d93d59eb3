//! Abuse limits: what one source address, one device, one engineer or one connection may hold
//! at once, and how often a source may fail to authenticate.
//!
//! Each limit has a key under `limits:` in the configuration ([`LimitsConfig`], defaults
//! there) and a message for the client that hits it naming that key, so the person hitting a
//! limit learns which one, and the operator which knob. Counts live in memory: they protect
//! this relay process, and a restart forgets them, as OpenSSH's `PerSourcePenalties` do.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::config::LimitsConfig;

/// A limit that was hit, with the message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitHit(pub String);

impl std::fmt::Display for LimitHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts things held at once, in all and per key.
#[derive(Debug)]
pub struct Counter<K: Hash + Eq + Clone> {
    per_key: Mutex<HashMap<K, usize>>,
    total: Mutex<usize>,
    /// Signalled each time a place is given back, for whoever waits for one.
    freed: tokio::sync::Notify,
}

impl<K: Hash + Eq + Clone> Default for Counter<K> {
    fn default() -> Self {
        Self {
            per_key: Mutex::new(HashMap::new()),
            total: Mutex::new(0),
            freed: tokio::sync::Notify::new(),
        }
    }
}

/// One thing counted by a [`Counter`]; dropping it gives the place back.
pub struct Permit<K: Hash + Eq + Clone> {
    counter: Arc<Counter<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Drop for Permit<K> {
    fn drop(&mut self) {
        let mut per_key = lock(&self.counter.per_key);
        if let Some(n) = per_key.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_key.remove(&self.key);
            }
        }
        drop(per_key);
        let mut total = lock(&self.counter.total);
        *total = total.saturating_sub(1);
        drop(total);
        self.counter.freed.notify_one();
    }
}

/// Which of a counter's two bounds a refused acquisition hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// The bound on all keys together.
    Total,
    /// The bound on this key.
    PerKey,
}

impl<K: Hash + Eq + Clone> Counter<K> {
    /// Takes a place for `key` unless `total` places are taken in all or `per_key` for it
    /// (0 means no bound).
    pub fn acquire(
        self: &Arc<Self>,
        key: &K,
        total: usize,
        per_key: usize,
    ) -> Result<Permit<K>, Bound> {
        let mut keys = lock(&self.per_key);
        let mut all = lock(&self.total);
        if total > 0 && *all >= total {
            return Err(Bound::Total);
        }
        let n = keys.entry(key.clone()).or_insert(0);
        if per_key > 0 && *n >= per_key {
            return Err(Bound::PerKey);
        }
        *n += 1;
        *all += 1;
        Ok(Permit {
            counter: self.clone(),
            key: key.clone(),
        })
    }

    /// Places held for `key`.
    pub fn held(&self, key: &K) -> usize {
        lock(&self.per_key).get(key).copied().unwrap_or(0)
    }
}

/// Failed authentications of one source in the current window.
#[derive(Debug, Clone, Copy)]
struct Failures {
    window_start: Instant,
    count: u32,
    refused_until: Option<Instant>,
}

/// A source's bucket of new connections: `tokens` left as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The relay's limits and what is held against them right now.
pub struct Limits {
    /// The configured bounds.
    pub config: LimitsConfig,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    new_connections: Mutex<HashMap<IpAddr, Bucket>>,
    handshakes: Arc<Counter<IpAddr>>,
    /// Connections waiting for a place among `max_handshakes`.
    handshakes_waiting: std::sync::atomic::AtomicUsize,
    http: Arc<Counter<IpAddr>>,
    device_sessions: Arc<Counter<String>>,
    engineer_sessions: Arc<Counter<String>>,
}

/// Counts a connection waiting for a handshake place while it lives.
struct WaitingGuard<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Most sources whose failures are remembered; past it, the oldest windows are forgotten
/// first, so a spray of addresses cannot grow the table without bound.
const MAX_TRACKED_SOURCES: usize = 65_536;

impl Limits {
    /// Limits with `config`'s bounds, nothing held.
    pub fn new(config: LimitsConfig) -> Arc<Limits> {
        Arc::new(Limits {
            config,
            failures: Mutex::new(HashMap::new()),
            new_connections: Mutex::new(HashMap::new()),
            handshakes: Arc::default(),
            handshakes_waiting: std::sync::atomic::AtomicUsize::new(0),
            http: Arc::default(),
            device_sessions: Arc::default(),
            engineer_sessions: Arc::default(),
        })
    }

    /// If `source` is refused for failing to authenticate too often: the message.
    pub fn auth_refused(&self, source: IpAddr) -> Option<LimitHit> {
        let now = Instant::now();
        let failures = lock(&self.failures);
        let until = failures.get(&source)?.refused_until?;
        (until > now).then(|| {
            LimitHit(format!(
                "too many failed authentications from {source}: refused for {} s more (limits.auth_failures_per_source)",
                (until - now).as_secs() + 1
            ))
        })
    }

    /// Notes a failed authentication from `source`; returns the message if it is refused now.
    pub fn auth_failed(&self, source: IpAddr) -> Option<LimitHit> {
        let max = self.config.auth_failures_per_source;
        if max == 0 {
            return None;
        }
        let window = self.config.auth_failure_window;
        let now = Instant::now();
        {
            let mut failures = lock(&self.failures);
            if failures.len() >= MAX_TRACKED_SOURCES && !failures.contains_key(&source) {
                failures.retain(|_, f| {
                    now.duration_since(f.window_start) < window
                        || f.refused_until.is_some_and(|u| u > now)
                });
                if failures.len() >= MAX_TRACKED_SOURCES {
                    return None;
                }
            }
            let f = failures.entry(source).or_insert(Failures {
                window_start: now,
                count: 0,
                refused_until: None,
            });
            if now.duration_since(f.window_start) >= window {
                f.window_start = now;
                f.count = 0;
            }
            f.count = f.count.saturating_add(1);
            if f.count >= max {
                f.refused_until = Some(now + window);
            }
        }
        self.auth_refused(source)
    }

    /// Takes one new connection of `source` from its bucket, or says it comes too fast.
    pub fn new_connection(&self, source: IpAddr) -> Result<(), LimitHit> {
        self.new_connection_at(source, Instant::now())
    }

    fn new_connection_at(&self, source: IpAddr, now: Instant) -> Result<(), LimitHit> {
        let rate = f64::from(self.config.handshake_rate_per_source);
        if rate <= 0.0 {
            return Ok(());
        }
        let burst = f64::from(self.config.handshake_burst_per_source.max(1));
        let mut buckets = lock(&self.new_connections);
        if buckets.len() >= MAX_TRACKED_SOURCES && !buckets.contains_key(&source) {
            // A full bucket is the same as a forgotten one, so dropping them loses nothing.
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if buckets.len() >= MAX_TRACKED_SOURCES {
                return Err(LimitHit(format!(
                    "the relay tracks too many sources opening connections (limits.handshake_rate_per_source: {})",
                    self.config.handshake_rate_per_source
                )));
            }
        }
        let b = buckets.entry(source).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens < 1.0 {
            return Err(LimitHit(format!(
                "too many new connections from {source} (limits.handshake_rate_per_source: {} per second); try again later",
                self.config.handshake_rate_per_source
            )));
        }
        b.tokens -= 1.0;
        Ok(())
    }

    /// A place for one connection of `source` that has not authenticated yet.
    pub fn handshake(&self, source: IpAddr) -> Result<Permit<IpAddr>, LimitHit> {
        self.try_handshake(source).map_err(|(hit, _)| hit)
    }

    /// A place for one connection of `source` that has not authenticated yet, waiting up to
    /// `handshake_wait` for one when all `max_handshakes` are taken: after an outage every
    /// board reconnects at once, and a board that waits a moment logs in, where one refused
    /// backs off for longer than the queue would have taken. At most `max_handshakes`
    /// connections wait; the bound per source is never waited for, so that one source
    /// cannot queue in front of the others.
    pub async fn handshake_queued(&self, source: IpAddr) -> Result<Permit<IpAddr>, LimitHit> {
        use std::sync::atomic::Ordering;
        let deadline = tokio::time::Instant::now() + self.config.handshake_wait;
        let mut queued = None;
        loop {
            // Armed before the attempt, so that a place freed in between is not missed.
            let freed = self.handshakes.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let hit = match self.try_handshake(source) {
                Ok(permit) => return Ok(permit),
                Err((hit, Bound::Total)) if !self.config.handshake_wait.is_zero() => hit,
                Err((hit, _)) => return Err(hit),
            };
            if queued.is_none() {
                let waiting = self.handshakes_waiting.fetch_add(1, Ordering::Relaxed);
                queued = Some(WaitingGuard(&self.handshakes_waiting));
                if waiting >= self.config.max_handshakes {
                    return Err(hit);
                }
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(hit);
            }
        }
    }

    fn try_handshake(&self, source: IpAddr) -> Result<Permit<IpAddr>, (LimitHit, Bound)> {
        let c = &self.config;
        self.handshakes
            .acquire(&source, c.max_handshakes, c.max_handshakes_per_source)
            .map_err(|bound| {
                let hit = match bound {
                Bound::Total => LimitHit(format!(
                    "the relay has {} logins in progress (limits.max_handshakes); try again later",
                    c.max_handshakes
                )),
                Bound::PerKey => LimitHit(format!(
                    "too many logins in progress from {source} (limits.max_handshakes_per_source: {}); try again later",
                    c.max_handshakes_per_source
                )),
                };
                (hit, bound)
            })
    }

    /// A place for one HTTP connection of `source`.
    pub fn http_connection(&self, source: IpAddr) -> Result<Permit<IpAddr>, LimitHit> {
        let c = &self.config;
        self.http
            .acquire(
                &source,
                c.max_http_connections,
                c.max_http_connections_per_source,
            )
            .map_err(|bound| match bound {
                Bound::Total => LimitHit(format!(
                    "the relay has {} HTTP connections open (limits.max_http_connections); try again later",
                    c.max_http_connections
                )),
                Bound::PerKey => LimitHit(format!(
                    "too many HTTP connections from {source} (limits.max_http_connections_per_source: {})",
                    c.max_http_connections_per_source
                )),
            })
    }

    /// Places for one engineer session on a device: one against the device's bound, one
    /// against the engineer's.
    pub fn session(
        &self,
        device_id: &str,
        device_name: &str,
        engineer: &str,
    ) -> Result<(Permit<String>, Permit<String>), LimitHit> {
        let c = &self.config;
        let on_device = self
            .device_sessions
            .acquire(&device_id.to_string(), 0, c.sessions_per_device)
            .map_err(|_| {
                LimitHit(format!(
                    "device {device_name} has {} sessions open (limits.sessions_per_device); close one first",
                    c.sessions_per_device
                ))
            })?;
        let of_engineer = self
            .engineer_sessions
            .acquire(&engineer.to_string(), 0, c.sessions_per_engineer)
            .map_err(|_| {
                LimitHit(format!(
                    "engineer {engineer} has {} sessions open (limits.sessions_per_engineer); close one first",
                    c.sessions_per_engineer
                ))
            })?;
        Ok((on_device, of_engineer))
    }

    /// Sessions open on a device now.
    pub fn device_sessions(&self, device_id: &str) -> usize {
        self.device_sessions.held(&device_id.to_string())
    }
}

/// Channels open on one SSH connection.
#[derive(Default)]
pub struct ChannelCount(Arc<Counter<()>>);

impl ChannelCount {
    /// A place for one more channel unless `max` are open (0: no bound).
    pub fn open(&self, max: usize) -> Result<Permit<()>, LimitHit> {
        self.0.acquire(&(), max, 0).map_err(|_| {
            LimitHit(format!(
                "{max} channels are open on this connection (limits.channels_per_connection)"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Arc<Limits> {
        Limits::new(LimitsConfig {
            auth_failures_per_source: 3,
            max_handshakes: 3,
            max_handshakes_per_source: 2,
            sessions_per_device: 1,
            sessions_per_engineer: 2,
            ..LimitsConfig::default()
        })
    }

    #[test]
    fn new_connections_are_rate_limited_per_source() {
        let l = Limits::new(LimitsConfig {
            handshake_rate_per_source: 10,
            handshake_burst_per_source: 3,
            ..LimitsConfig::default()
        });
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.new_connection_at(a, t0).is_ok());
        }
        let hit = l
            .new_connection_at(a, t0)
            .err()
            .map(|h| h.0)
            .unwrap_or_default();
        assert!(
            hit.contains("192.0.2.1") && hit.contains("limits.handshake_rate_per_source"),
            "{hit}"
        );
        // Another source has its own bucket.
        assert!(l.new_connection_at(b, t0).is_ok());
        // 100 ms refill one connection at 10 per second, and no more.
        let t1 = t0 + std::time::Duration::from_millis(100);
        assert!(l.new_connection_at(a, t1).is_ok());
        assert!(l.new_connection_at(a, t1).is_err());
        // A long pause refills only up to the burst.
        let t2 = t0 + std::time::Duration::from_secs(60);
        for _ in 0..3 {
            assert!(l.new_connection_at(a, t2).is_ok());
        }
        assert!(l.new_connection_at(a, t2).is_err());
        // 0 turns the bound off.
        let off = Limits::new(LimitsConfig {
            handshake_rate_per_source: 0,
            ..LimitsConfig::default()
        });
        for _ in 0..1000 {
            assert!(off.new_connection_at(a, t0).is_ok());
        }
    }

    #[test]
    fn failures_refuse_a_source_and_only_that_source() {
        let l = limits();
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        assert!(l.auth_failed(a).is_none());
        assert!(l.auth_failed(a).is_none());
        let hit = l.auth_failed(a).map(|h| h.0).unwrap_or_default();
        assert!(
            hit.contains("192.0.2.1") && hit.contains("limits.auth_failures_per_source"),
            "{hit}"
        );
        assert!(l.auth_refused(a).is_some());
        assert!(l.auth_refused(b).is_none());
    }

    #[test]
    fn permits_bound_and_are_given_back() {
        let l = limits();
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let p1 = l.handshake(a);
        let p2 = l.handshake(a);
        assert!(p1.is_ok() && p2.is_ok());
        assert!(
            l.handshake(a)
                .is_err_and(|h| h.0.contains("max_handshakes_per_source"))
        );
        let p3 = l.handshake(b);
        assert!(p3.is_ok());
        assert!(
            l.handshake(b)
                .is_err_and(|h| h.0.contains("limits.max_handshakes)"))
        );
        drop(p1);
        assert!(l.handshake(b).is_ok());

        let s = l.session("dev_1", "board1", "alice");
        assert!(s.is_ok());
        assert!(
            l.session("dev_1", "board1", "bob")
                .is_err_and(|h| h.0.contains("board1"))
        );
        // A refusal on the engineer's bound gives the device's place back.
        let t = l.session("dev_2", "board2", "alice");
        assert!(t.is_ok());
        assert!(
            l.session("dev_3", "board3", "alice")
                .is_err_and(|h| h.0.contains("sessions_per_engineer"))
        );
        assert_eq!(l.device_sessions("dev_3"), 0);
        drop(s);
        assert!(l.session("dev_1", "board1", "bob").is_ok());

        let c = ChannelCount::default();
        let c1 = c.open(1);
        assert!(c1.is_ok());
        assert!(c.open(1).is_err());
        drop(c1);
        assert!(c.open(1).is_ok());
    }

    /// At most `max_handshakes` connections wait for a place; the next one is refused at once
    /// rather than queued, and a waiter gets the place given back.
    #[tokio::test]
    async fn a_full_waiting_queue_refuses_at_once() -> Result<(), LimitHit> {
        use std::sync::atomic::Ordering;
        use std::time::Duration;
        let l = Limits::new(LimitsConfig {
            max_handshakes: 1,
            max_handshakes_per_source: 0,
            handshake_wait: Duration::from_secs(5),
            ..LimitsConfig::default()
        });
        let held = l.handshake([192, 0, 2, 1].into())?;
        let queued = l.clone();
        let waiter =
            tokio::spawn(async move { queued.handshake_queued([192, 0, 2, 2].into()).await });
        for _ in 0..200 {
            if l.handshakes_waiting.load(Ordering::Relaxed) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(l.handshakes_waiting.load(Ordering::Relaxed), 1);

        let t = Instant::now();
        let refused = l.handshake_queued([192, 0, 2, 3].into()).await;
        assert!(refused.is_err_and(|h| h.0.contains("limits.max_handshakes)")));
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        // The refused one left the queue as it was.
        assert_eq!(l.handshakes_waiting.load(Ordering::Relaxed), 1);

        drop(held);
        let given = tokio::time::timeout(Duration::from_secs(2), waiter).await;
        assert!(matches!(given, Ok(Ok(Ok(_)))));
        assert_eq!(l.handshakes_waiting.load(Ordering::Relaxed), 0);
        Ok(())
    }
}
