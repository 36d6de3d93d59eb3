//! The chaos proxy: a loopback TCP proxy that cuts every connection through it at random
//! intervals, for tests of links that must survive a flaky network.

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Result;

/// A loopback TCP proxy that, when told to, cuts every connection through it at random
/// intervals: the network of a board in the field, in miniature.
pub struct ChaosProxy {
    /// The loopback port the proxy listens on.
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cutting: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
    /// Connections cut so far.
    pub cuts: std::sync::Arc<std::sync::atomic::AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ChaosProxy {
    /// Listens on a free loopback port and forwards each connection to `127.0.0.1:target`.
    /// Cuts come at pseudo-random intervals between `min` and `max` once cutting is on.
    pub fn start(target: u16, min: Duration, max: Duration, seed: u64) -> Result<ChaosProxy> {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let cutting = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let cuts = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        {
            let (stop, conns) = (stop.clone(), conns.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let client = match listener.accept() {
                        Ok((c, _)) => c,
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    };
                    let _ = client.set_nonblocking(false);
                    // Relay down: the client sees the connection close, as it would.
                    let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)) else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    let pairs = [
                        (client.try_clone(), upstream.try_clone()),
                        (upstream.try_clone(), client.try_clone()),
                    ];
                    if let Ok(mut list) = conns.lock() {
                        list.push(client);
                        list.push(upstream);
                    }
                    for pair in pairs {
                        if let (Ok(mut from), Ok(mut to)) = pair {
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                                let _ = from.shutdown(std::net::Shutdown::Both);
                            });
                        }
                    }
                }
            }));
        }
        {
            let (stop, cutting, conns, cuts) =
                (stop.clone(), cutting.clone(), conns.clone(), cuts.clone());
            threads.push(std::thread::spawn(move || {
                let mut x = seed | 1;
                while !stop.load(Ordering::SeqCst) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let span = max.saturating_sub(min).as_millis().max(1) as u64;
                    let wait = min + Duration::from_millis(x % span);
                    let until = Instant::now() + wait;
                    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if cutting.load(Ordering::SeqCst) {
                        let n = cut(&conns);
                        cuts.fetch_add(n as u64 / 2, Ordering::SeqCst);
                    }
                }
            }));
        }
        Ok(ChaosProxy {
            port,
            stop,
            cutting,
            conns,
            cuts,
            threads,
        })
    }

    /// Turns the random cuts on or off.
    pub fn set_cutting(&self, on: bool) {
        self.cutting.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Shuts down every connection in `conns`; returns how many sockets were shut.
fn cut(conns: &std::sync::Mutex<Vec<TcpStream>>) -> usize {
    let Ok(mut list) = conns.lock() else {
        return 0;
    };
    let n = list.len();
    for c in list.drain(..) {
        let _ = c.shutdown(std::net::Shutdown::Both);
    }
    n
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        cut(&self.conns);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
