//! A TCP proxy that can freeze traffic, to make the broker look slow or
//! partitioned without touching the broker process. On thaw, connections that
//! were frozen are cut (their requests are lost, as in a partition) so no stale
//! request reaches the broker after its client gave up on it.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
struct State {
    frozen: AtomicBool,
    generation: AtomicU64,
    closed: AtomicBool,
}

pub struct FaultProxy {
    pub port: u16,
    state: Arc<State>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream_port`.
    pub fn start(upstream_port: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let s = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.closed.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let s = s.clone();
                std::thread::spawn(move || connect(client, upstream_port, s));
            }
        });
        FaultProxy { port, state }
    }

    /// Stops forwarding: requests hang, as with a stalled broker or network.
    pub fn freeze(&self) {
        self.state.frozen.store(true, Ordering::SeqCst);
    }

    /// Forwards again; connections from before are cut.
    pub fn thaw(&self) {
        self.state.generation.fetch_add(1, Ordering::SeqCst);
        self.state.frozen.store(false, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.closed.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn connect(client: TcpStream, upstream_port: u16, s: Arc<State>) {
    let generation = s.generation.load(Ordering::SeqCst);
    while s.frozen.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(10));
    }
    if s.generation.load(Ordering::SeqCst) != generation {
        return; // accepted while frozen: cut
    }
    let Ok(upstream) = TcpStream::connect(("127.0.0.1", upstream_port)) else { return };
    let (c2, u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    let s2 = s.clone();
    std::thread::spawn(move || pump(c2, u2, s2, generation));
    pump(upstream, client, s, generation);
}

fn pump(mut from: TcpStream, mut to: TcpStream, s: Arc<State>, generation: u64) {
    from.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if s.generation.load(Ordering::SeqCst) != generation || s.closed.load(Ordering::Relaxed) {
            break;
        }
        if s.frozen.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // Frozen while this read was waiting: hold the bytes until thaw,
                // when the connection is cut and they are dropped.
                while s.frozen.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if s.generation.load(Ordering::SeqCst) != generation || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
