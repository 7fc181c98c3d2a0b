//! Black-box suite: no call through a session waits (much) longer than it should around the death
//! of the session's HTTP/2 connection (guide, failure-mode table: when a connection ends — peer
//! close, reset, GOAWAY, keep-alive timeout — the streams it carried fail promptly, requests it
//! never started go out on the next connection, later calls succeed on a new connection; a request
//! is never left waiting for the read timeout, 295 s, because its connection died).
//!
//! Public API only. Two backends on loopback:
//! - testkit's Kubernetes API server behind a small TCP proxy that can cut every connection,
//!   cut a connection after exactly N bytes in one direction (inside the TLS handshake, the
//!   HTTP/2 preface, a response body), throttle the server's bytes (slow bodies) and freeze a
//!   connection (sockets open, nothing forwarded);
//! - a frame-level HTTP/2 server over TLS written here (rustls + hand-made frames), because the
//!   testkit server cannot send GOAWAY: it holds streams, sends GOAWAY (graceful, refusing
//!   streams, with an error code, at once on every connection) and closes on command.
//!
//! Every call runs under a bound (5 s per call; 2–3 s where the guide says "promptly"); the
//! read timeout stays at its 295 s default so any wait it would end shows up as a hang.
//!
//! No call was found to hang because its connection died. Four tests here were open defects when
//! the suite was written (ignored until the session fixed them): with `max_streams_per_session(Some(n))`
//! full on a connection that received a graceful GOAWAY, queued calls waited for the old
//! connection's streams to end instead of going out on a new connection; and three cases of
//! "requests it never started go out on the next connection" that failed instead — calls racing a
//! graceful GOAWAY, calls waiting beyond the server's stream limit when a GOAWAY arrives, streams a
//! GOAWAY refused (above its last stream id). They now run with the others.

mod h2_common;

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::AsyncReadExt as _;
use futures::future::join_all;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_session::{KubeconfigSource, SessionPool};
use kube::api::{Api, LogParams, PostParams};
use kube::config::Kubeconfig;
use testkit::k8s::{Fault, K8sServer, KubeAuth, SAMPLE_NAMESPACE, build_kubeconfig};
use testkit::tls::{ClientAuth, TestCa};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep, timeout};

use h2_common::*;

/// The bound on one call: far below the 295 s read timeout and the 30 s keep-alive detection, far
/// above what a call on loopback takes even on an oversubscribed machine.
const CALL_BOUND: Duration = Duration::from_secs(5);

/// The pod whose log the body tests read.
const LOG_POD: &str = "warmup-0-pod";

/// Give [`LOG_POD`] a log of exactly `bytes` bytes.
fn set_log(server: &K8sServer, bytes: usize) {
    let line = "0123456789abcdefghijklmnopqrstuvwxyz-the-quick-brown-fox-jumps-over-the-lazy-dog\n";
    let log: String = line.repeat(bytes / line.len() + 1)[..bytes].to_owned();
    server.update_fixtures(move |f| {
        f.logs
            .insert((SAMPLE_NAMESPACE.to_owned(), LOG_POD.to_owned()), log);
    });
}

/// The log of [`LOG_POD`], read whole (its length).
async fn fetch_log(client: &kube::Client) -> Result<usize, String> {
    Api::<Pod>::namespaced(client.clone(), SAMPLE_NAMESPACE)
        .logs(LOG_POD, &LogParams::default())
        .await
        .map(|s| s.len())
        .map_err(|e| format!("{e:?}"))
}

/// The log of [`LOG_POD`] as a byte stream, read to its end (its length).
async fn stream_log(client: &kube::Client) -> Result<usize, String> {
    let mut stream = Api::<Pod>::namespaced(client.clone(), SAMPLE_NAMESPACE)
        .log_stream(LOG_POD, &LogParams::default())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let mut body = Vec::new();
    stream
        .read_to_end(&mut body)
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(body.len())
}

fn redirect(mut kubeconfig: Kubeconfig, port: u16) -> Kubeconfig {
    for c in &mut kubeconfig.clusters {
        if let Some(cluster) = c.cluster.as_mut() {
            cluster.server = Some(format!("https://127.0.0.1:{port}"));
        }
    }
    kubeconfig
}

fn pool_for(kubeconfig: Kubeconfig) -> SessionPool {
    SessionPool::builder(KubeconfigSource::from_kubeconfig(kubeconfig))
        .knobs_from(|_| None)
        .build()
}

/// `f` on its own task (spread over the runtime's workers), bounded by [`CALL_BOUND`]:
/// `Err("HUNG …")` when the bound passed.
fn bounded_task<F>(f: F) -> JoinHandle<Result<usize, String>>
where
    F: std::future::Future<Output = Result<usize, String>> + Send + 'static,
{
    tokio::spawn(async move {
        let started = Instant::now();
        timeout(CALL_BOUND, f)
            .await
            .unwrap_or_else(|_| Err(format!("HUNG: still waiting after {:?}", started.elapsed())))
    })
}

fn hung(results: &[Result<usize, String>]) -> usize {
    results
        .iter()
        .filter(|r| r.as_ref().is_err_and(|e| e.starts_with("HUNG")))
        .count()
}

/// Join tasks made by [`bounded_task`] (aborted ones are left out).
async fn join_bounded(tasks: Vec<JoinHandle<Result<usize, String>>>) -> Vec<Result<usize, String>> {
    timeout(Duration::from_secs(20), join_all(tasks))
        .await
        .expect("bounded tasks did not end")
        .into_iter()
        .filter_map(|joined| match joined {
            Ok(r) => Some(r),
            Err(e) if e.is_cancelled() => None,
            Err(e) => panic!("a call panicked: {e:?}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A loopback TCP proxy in front of testkit's server (from blackbox_h2_link.rs, extended).

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Forward bytes both ways.
    Forward,
    /// Forward, and cut the connection (both sockets) once this many bytes went server→client.
    CutDown(usize),
    /// The same, closing the client's socket with RST (SO_LINGER 0) instead of FIN.
    RstDown(usize),
    /// Forward, and cut the connection once this many bytes went client→server.
    CutUp(usize),
    /// Forward; server→client at most `chunk` bytes every `every` (a slow body).
    Throttle { chunk: usize, every: Duration },
}

/// One forwarded connection: its task (aborting it closes both sockets), whether it is frozen,
/// and the bytes it forwarded each way.
struct Link {
    task: JoinHandle<()>,
    frozen: Arc<AtomicBool>,
    down: Arc<AtomicU64>,
    up: Arc<AtomicU64>,
}

struct Proxy {
    port: u16,
    plan: Arc<Mutex<VecDeque<Mode>>>,
    accepted: Arc<AtomicU64>,
    links: Arc<Mutex<Vec<Link>>>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr, mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let plan: Arc<Mutex<VecDeque<Mode>>> = Arc::default();
        let accepted = Arc::new(AtomicU64::new(0));
        let links: Arc<Mutex<Vec<Link>>> = Arc::default();
        let task = {
            let (plan, accepted, links) = (plan.clone(), accepted.clone(), links.clone());
            tokio::spawn(async move {
                while let Ok((sock, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let m = plan.lock().unwrap().pop_front().unwrap_or(mode);
                    let frozen = Arc::new(AtomicBool::new(false));
                    let (down, up) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
                    let task = tokio::spawn(link(
                        sock,
                        upstream,
                        m,
                        frozen.clone(),
                        down.clone(),
                        up.clone(),
                    ));
                    links.lock().unwrap().push(Link {
                        task,
                        frozen,
                        down,
                        up,
                    });
                }
            })
        };
        Proxy {
            port,
            plan,
            accepted,
            links,
            task,
        }
    }

    /// The modes of the next connections, in order (then the mode the proxy started with).
    fn plan(&self, modes: impl IntoIterator<Item = Mode>) {
        self.plan.lock().unwrap().extend(modes);
    }

    fn clear_plan(&self) {
        self.plan.lock().unwrap().clear();
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Cut every connection forwarded so far (both sockets closed).
    fn cut_all(&self) {
        for l in self.links.lock().unwrap().drain(..) {
            l.task.abort();
        }
    }

    /// Stop forwarding on every connection so far, sockets left open (a black hole).
    fn freeze_all(&self) {
        for l in self.links.lock().unwrap().iter() {
            l.frozen.store(true, Ordering::SeqCst);
        }
    }

    /// Bytes (server→client, client→server) forwarded by the newest connection.
    fn newest_bytes(&self) -> (u64, u64) {
        self.links.lock().unwrap().last().map_or((0, 0), |l| {
            (l.down.load(Ordering::SeqCst), l.up.load(Ordering::SeqCst))
        })
    }

    fn kubeconfig(&self, server: &K8sServer) -> Kubeconfig {
        redirect(server.kubeconfig_token(), self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut_all();
    }
}

async fn link(
    mut client: TcpStream,
    upstream: SocketAddr,
    mode: Mode,
    frozen: Arc<AtomicBool>,
    down: Arc<AtomicU64>,
    up: Arc<AtomicU64>,
) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (down_limit, up_limit, throttle) = match mode {
        Mode::CutDown(n) => (Some(n), None, None),
        Mode::RstDown(n) => {
            // Closing the socket now sends RST instead of FIN.
            let _ = client.set_zero_linger();
            (Some(n), None, None)
        }
        Mode::CutUp(n) => (None, Some(n), None),
        Mode::Throttle { chunk, every } => (None, None, Some((chunk, every))),
        Mode::Forward => (None, None, None),
    };
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    // Whichever way ends first (EOF, error, limit) ends both: the sockets close together when
    // this returns (or the task is aborted).
    tokio::select! {
        () = pipe(&mut server_read, &mut client_write, down_limit, throttle, &frozen, &down) => {}
        () = pipe(&mut client_read, &mut server_write, up_limit, None, &frozen, &up) => {}
    }
}

async fn pipe(
    from: &mut ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    limit: Option<usize>,
    throttle: Option<(usize, Duration)>,
    frozen: &AtomicBool,
    count: &AtomicU64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut sent = 0usize;
    loop {
        let mut cap = buf.len();
        if let Some((chunk, _)) = throttle {
            cap = cap.min(chunk);
        }
        if let Some(limit) = limit {
            cap = cap.min(limit.saturating_sub(sent));
        }
        if cap == 0 {
            return;
        }
        let n = match from.read(&mut buf[..cap]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            sleep(ms(5)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        sent += n;
        count.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::SeqCst);
        if let Some((_, every)) = throttle {
            sleep(every).await;
        }
    }
}

fn proxied_pool(proxy: &Proxy, server: &K8sServer) -> SessionPool {
    pool_for(proxy.kubeconfig(server))
}

/// Cut every connection, wait until the server saw them close, then 50 ms for the client to read
/// the end too. (A request written before the client read it goes onto a dead socket and fails:
/// no client can know better. The guide's promise is about connections hyper reports closed.)
async fn cut_and_settle(proxy: &Proxy, open: impl Fn() -> u64) {
    proxy.cut_all();
    assert!(
        wait_until(Duration::from_secs(3), || open() == 0).await,
        "the server still has {} connections open after a cut",
        open()
    );
    sleep(ms(50)).await;
}

/// Run `phase` (which makes bounded calls and returns them) until it made the proxy accept a new
/// connection (so the connection plan applied to it), at most 5 times; every attempt's calls must
/// end within their bound. Returns the last attempt's results.
async fn on_a_new_connection<F, Fut>(
    proxy: &Proxy,
    what: &str,
    mut phase: F,
) -> Vec<Result<usize, String>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Vec<Result<usize, String>>>,
{
    for _ in 0..5 {
        let before = proxy.accepted();
        let results = phase().await;
        assert_eq!(
            hung(&results),
            0,
            "{what}: {} of {} calls hung: {:?}",
            hung(&results),
            results.len(),
            results.iter().find(|r| r.is_err())
        );
        if proxy.accepted() > before {
            return results;
        }
    }
    panic!("{what}: five bursts in a row went to a connection already cut");
}

// ---------------------------------------------------------------------------------------------
// A frame-level HTTP/2 server over TLS that can send GOAWAY.

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const NO_ERROR: u32 = 0x0;
const INTERNAL_ERROR: u32 = 0x2;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const MAX_STREAM_ID: u32 = 0x7fff_ffff;
const POD_LIST: &[u8] =
    br#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":[]}"#;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame payload");
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & MAX_STREAM_ID).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `:status 200` (static index 8) and `content-type: application/json` (literal without
/// indexing, static name 31), HPACK without Huffman.
fn response(stream: u32) -> Vec<u8> {
    let mut block = vec![0x88, 0x0f, 0x10, 0x10];
    block.extend_from_slice(b"application/json");
    let mut out = frame(HEADERS, END_HEADERS, stream, &block);
    out.extend(frame(DATA, END_STREAM, stream, POD_LIST));
    out
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Behaviour {
    /// Answer every stream at once.
    Answer,
    /// Hold every stream until [`Cmd::AnswerHeld`].
    Hold,
    /// Answer the first n streams, hold the rest.
    HoldAfter(u64),
    /// Send GOAWAY (last stream 0, this code) right after SETTINGS: a draining server. The socket
    /// stays open until the client closes it.
    GoAwayAtOnce(u32),
    /// Reset the first n streams with `REFUSED_STREAM` (not processed), answer the rest.
    RefuseFirst(u64),
}

#[derive(Clone, Copy, Debug)]
enum Last {
    /// 2^31 − 1: the first half of a graceful shutdown (hyper's and Go's servers do this).
    Max,
    /// The highest stream received.
    Highest,
    /// The id of the n-th stream held (0: none): the ones after it are refused.
    KeepFirst(usize),
}

#[derive(Debug)]
enum Cmd {
    GoAway {
        last: Last,
        code: u32,
    },
    /// Answer every stream held (only those at or below the GOAWAY's last id are still held).
    AnswerHeld,
    /// Close the TCP connection.
    Close,
}

#[derive(Default)]
struct H2Stats {
    tcp: AtomicU64,
    tls: AtomicU64,
    open: AtomicU64,
    streams: AtomicU64,
    held: AtomicU64,
    answered: AtomicU64,
    /// Streams held when a GOAWAY's last id excluded them (never answered).
    refused: AtomicU64,
    /// Streams received after this connection's GOAWAY, above its last id (ignored, as RFC 9113
    /// says; a client racing our GOAWAY may send a few).
    ignored: AtomicU64,
    /// Streams reset with `REFUSED_STREAM` ([`Behaviour::RefuseFirst`]).
    reset_refused: AtomicU64,
    /// Streams received per connection (index: connection number − 1).
    streams_on: Mutex<Vec<u64>>,
}

struct OpenGuard(Arc<H2Stats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

struct H2Server {
    addr: SocketAddr,
    ca: TestCa,
    stats: Arc<H2Stats>,
    plan: Arc<Mutex<VecDeque<Behaviour>>>,
    default: Arc<Mutex<Behaviour>>,
    conns: Arc<Mutex<Vec<mpsc::UnboundedSender<Cmd>>>>,
    task: JoinHandle<()>,
}

impl Drop for H2Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl H2Server {
    /// Advertises `max_streams` concurrent streams; new connections behave as `default` unless
    /// planned otherwise.
    async fn start(max_streams: u32, default: Behaviour) -> Self {
        testkit::tls::install_crypto_provider();
        let ca = TestCa::new("h2-goaway").unwrap();
        let leaf = ca.server_leaf().unwrap();
        let mut config = (*ca.server_config(&leaf, ClientAuth::None).unwrap()).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(H2Stats::default());
        let plan: Arc<Mutex<VecDeque<Behaviour>>> = Arc::default();
        let default = Arc::new(Mutex::new(default));
        let conns: Arc<Mutex<Vec<mpsc::UnboundedSender<Cmd>>>> = Arc::default();
        let task = {
            let (stats, plan, default, conns) =
                (stats.clone(), plan.clone(), default.clone(), conns.clone());
            tokio::spawn(async move {
                let mut tasks = JoinSet::new();
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((tcp, _)) = accepted else { continue };
                            stats.tcp.fetch_add(1, Ordering::SeqCst);
                            let behaviour = plan
                                .lock()
                                .unwrap()
                                .pop_front()
                                .unwrap_or(*default.lock().unwrap());
                            let (tx, rx) = mpsc::unbounded_channel();
                            let index = {
                                let mut conns = conns.lock().unwrap();
                                conns.push(tx);
                                conns.len() - 1
                            };
                            stats.streams_on.lock().unwrap().push(0);
                            tasks.spawn(serve_h2(
                                tcp,
                                index,
                                config.clone(),
                                behaviour,
                                max_streams,
                                stats.clone(),
                                rx,
                            ));
                        }
                        Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                    }
                }
            })
        };
        H2Server {
            addr,
            ca,
            stats,
            plan,
            default,
            conns,
            task,
        }
    }

    fn plan(&self, behaviours: impl IntoIterator<Item = Behaviour>) {
        self.plan.lock().unwrap().extend(behaviours);
    }

    fn clear_plan(&self) {
        self.plan.lock().unwrap().clear();
    }

    fn set_default(&self, behaviour: Behaviour) {
        *self.default.lock().unwrap() = behaviour;
    }

    /// Send `cmd` to connection `n` (1, 2, … in TCP accept order).
    fn send(&self, n: usize, cmd: Cmd) {
        let _ = self.conns.lock().unwrap()[n - 1].send(cmd);
    }

    fn kubeconfig(&self) -> Kubeconfig {
        build_kubeconfig(
            &format!("https://{}", self.addr),
            self.ca.cert_pem(),
            "h2",
            KubeAuth::Token("h2-test-token"),
        )
    }

    fn get(&self, counter: impl Fn(&H2Stats) -> &AtomicU64) -> u64 {
        counter(&self.stats).load(Ordering::SeqCst)
    }

    /// Streams connection `n` received.
    fn streams_on(&self, n: usize) -> u64 {
        self.stats.streams_on.lock().unwrap()[n - 1]
    }

    fn tls(&self) -> u64 {
        self.get(|s| &s.tls)
    }

    fn open(&self) -> u64 {
        self.get(|s| &s.open)
    }

    fn held(&self) -> u64 {
        self.get(|s| &s.held)
    }

    fn summary(&self) -> String {
        format!(
            "server: tcp {}, tls {}, open {}, streams {}, held {}, answered {}, refused {}, \
             ignored after GOAWAY {}",
            self.get(|s| &s.tcp),
            self.tls(),
            self.open(),
            self.get(|s| &s.streams),
            self.held(),
            self.get(|s| &s.answered),
            self.get(|s| &s.refused),
            self.get(|s| &s.ignored),
        )
    }
}

/// One connection's HTTP/2 state (the TLS is handled by [`serve_h2`]).
struct H2Conn {
    index: usize,
    behaviour: Behaviour,
    stats: Arc<H2Stats>,
    plain: Vec<u8>,
    out: Vec<u8>,
    preface: bool,
    held: Vec<u32>,
    highest: u32,
    goaway_last: Option<u32>,
    close: bool,
}

impl H2Conn {
    fn on_open(&mut self, max_streams: u32) {
        let mut settings = vec![0x0, 0x3];
        settings.extend_from_slice(&max_streams.to_be_bytes());
        self.out.extend(frame(SETTINGS, 0, 0, &settings));
        if let Behaviour::GoAwayAtOnce(code) = self.behaviour {
            self.go_away(0, code);
        }
    }

    fn parse(&mut self) {
        if !self.preface {
            if self.plain.len() < PREFACE.len() {
                return;
            }
            if &self.plain[..PREFACE.len()] != PREFACE {
                self.close = true;
                return;
            }
            self.plain.drain(..PREFACE.len());
            self.preface = true;
        }
        while self.plain.len() >= 9 {
            let len = usize::from(self.plain[0]) << 16
                | usize::from(self.plain[1]) << 8
                | usize::from(self.plain[2]);
            if self.plain.len() < 9 + len {
                return;
            }
            let (kind, flags) = (self.plain[3], self.plain[4]);
            let stream =
                u32::from_be_bytes([self.plain[5], self.plain[6], self.plain[7], self.plain[8]])
                    & MAX_STREAM_ID;
            let payload: Vec<u8> = self.plain[9..9 + len].to_vec();
            self.plain.drain(..9 + len);
            self.frame(kind, flags, stream, &payload);
        }
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        match kind {
            SETTINGS if flags & ACK == 0 => self.out.extend(frame(SETTINGS, ACK, 0, &[])),
            PING if flags & ACK == 0 => self.out.extend(frame(PING, ACK, 0, payload)),
            HEADERS => self.request(stream),
            RST_STREAM => {
                if let Some(i) = self.held.iter().position(|&s| s == stream) {
                    self.held.remove(i);
                    self.stats.held.fetch_sub(1, Ordering::SeqCst);
                }
            }
            _ => {}
        }
    }

    fn request(&mut self, stream: u32) {
        self.stats.streams.fetch_add(1, Ordering::SeqCst);
        self.stats.streams_on.lock().unwrap()[self.index] += 1;
        self.highest = self.highest.max(stream);
        if self.goaway_last.is_some_and(|last| stream > last) {
            self.stats.ignored.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let received = self.stats.streams_on.lock().unwrap()[self.index];
        if matches!(self.behaviour, Behaviour::RefuseFirst(n) if received <= n) {
            self.out
                .extend(frame(RST_STREAM, 0, stream, &REFUSED_STREAM.to_be_bytes()));
            self.stats.reset_refused.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let hold = match self.behaviour {
            Behaviour::Hold => true,
            Behaviour::HoldAfter(n) => received > n,
            _ => false,
        };
        if hold {
            self.held.push(stream);
            self.stats.held.fetch_add(1, Ordering::SeqCst);
        } else {
            self.answer(stream);
        }
    }

    fn answer(&mut self, stream: u32) {
        self.out.extend(response(stream));
        self.stats.answered.fetch_add(1, Ordering::SeqCst);
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::GoAway { last, code } => {
                let last = match last {
                    Last::Max => MAX_STREAM_ID,
                    Last::Highest => self.highest,
                    Last::KeepFirst(n) => n
                        .checked_sub(1)
                        .and_then(|i| self.held.get(i))
                        .copied()
                        .unwrap_or(0),
                };
                self.go_away(last, code);
            }
            Cmd::AnswerHeld => {
                for stream in std::mem::take(&mut self.held) {
                    self.stats.held.fetch_sub(1, Ordering::SeqCst);
                    self.answer(stream);
                }
            }
            Cmd::Close => self.close = true,
        }
    }

    fn go_away(&mut self, last: u32, code: u32) {
        let last = self.goaway_last.map_or(last, |l| l.min(last));
        self.goaway_last = Some(last);
        let mut payload = last.to_be_bytes().to_vec();
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(b"blackbox_h2_hang");
        self.out.extend(frame(GOAWAY, 0, 0, &payload));
        let before = self.held.len();
        self.held.retain(|&s| s <= last);
        let refused = u64::try_from(before - self.held.len()).unwrap_or(0);
        self.stats.held.fetch_sub(refused, Ordering::SeqCst);
        self.stats.refused.fetch_add(refused, Ordering::SeqCst);
    }
}

/// Write every TLS record rustls has for the socket; false when the socket failed.
async fn flush_tls(tls: &mut rustls::ServerConnection, tcp: &mut TcpStream) -> bool {
    while tls.wants_write() {
        let mut records = Vec::new();
        if tls.write_tls(&mut records).is_err() || tcp.write_all(&records).await.is_err() {
            return false;
        }
    }
    true
}

async fn serve_h2(
    mut tcp: TcpStream,
    index: usize,
    config: Arc<rustls::ServerConfig>,
    behaviour: Behaviour,
    max_streams: u32,
    stats: Arc<H2Stats>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
) {
    let _ = tcp.set_nodelay(true);
    let Ok(mut tls) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut conn = H2Conn {
        index,
        behaviour,
        stats: stats.clone(),
        plain: Vec::new(),
        out: Vec::new(),
        preface: false,
        held: Vec::new(),
        highest: 0,
        goaway_last: None,
        close: false,
    };
    let mut open: Option<OpenGuard> = None;
    let mut buf = vec![0u8; 32 * 1024];
    let mut chunk = vec![0u8; 32 * 1024];
    loop {
        if open.is_some() && !conn.out.is_empty() {
            if tls.writer().write_all(&conn.out).is_err() {
                break;
            }
            conn.out.clear();
        }
        if !flush_tls(&mut tls, &mut tcp).await || conn.close {
            break;
        }
        tokio::select! {
            read = tcp.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut data = &buf[..n];
                let mut failed = false;
                // Feed the records in, draining the plaintext as it comes (rustls buffers only
                // so much of it).
                while !data.is_empty() && !failed && !conn.close {
                    if tls.read_tls(&mut data).is_err() || tls.process_new_packets().is_err() {
                        failed = true;
                    }
                    loop {
                        match tls.reader().read(&mut chunk) {
                            Ok(0) => {
                                conn.close = true;
                                break;
                            }
                            Ok(n) => conn.plain.extend_from_slice(&chunk[..n]),
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(_) => {
                                conn.close = true;
                                break;
                            }
                        }
                    }
                }
                if failed {
                    let _ = flush_tls(&mut tls, &mut tcp).await;
                    break;
                }
                if open.is_none() && !tls.is_handshaking() {
                    stats.tls.fetch_add(1, Ordering::SeqCst);
                    stats.open.fetch_add(1, Ordering::SeqCst);
                    open = Some(OpenGuard(stats.clone()));
                    conn.on_open(max_streams);
                }
                conn.parse();
            }
            Some(cmd) = cmds.recv() => conn.command(cmd),
        }
    }
    let held = u64::try_from(conn.held.len()).unwrap_or(0);
    stats.held.fetch_sub(held, Ordering::SeqCst);
}

fn h2_pool(server: &H2Server) -> Arc<SessionPool> {
    Arc::new(pool_for(server.kubeconfig()))
}

/// `n` pod lists through `pool`, each a bounded task of its own.
fn spawn_calls(pool: &Arc<SessionPool>, n: usize) -> Vec<JoinHandle<Result<usize, String>>> {
    (0..n)
        .map(|_| {
            let pool = pool.clone();
            bounded_task(async move { call(&pool, &key("east")).await })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Many workers, many cuts at varied moments.

// Eight workers on two threads call in a loop (pod lists the server holds 20 ms, node lists
// answered at once) while the proxy cuts the connection 20 times at varied moments — some right
// after the previous cut, while the replacement is still in its TLS handshake. Every call ends
// within 5 s; after every other cut, a call started after it succeeds; afterwards one connection
// is open and the counts agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_cuts_at_varied_moments_every_call_ends() {
    let server = K8sServer::start().await.unwrap();
    server.inject(PODS, Fault::latency(ms(20)));
    let proxy = Proxy::start(server.addr(), Mode::Forward).await;
    let pool = Arc::new(proxied_pool(&proxy, &server));
    let k = key("east");
    all_ok(&burst(&pool, &k, 5).await);

    const CUTS: usize = 20;
    // Milliseconds before each cut; after odd cuts the test also waits for a success.
    const GAPS: [u64; CUTS] = [
        0, 35, 1, 60, 3, 12, 0, 90, 7, 25, 2, 45, 0, 18, 5, 70, 1, 30, 9, 50,
    ];
    let epoch = Arc::new(AtomicU64::new(0));
    let ok_in_epoch: Arc<Vec<AtomicU64>> =
        Arc::new((0..=CUTS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (pool, k, stop, epoch, ok_in_epoch) = (
                pool.clone(),
                k.clone(),
                stop.clone(),
                epoch.clone(),
                ok_in_epoch.clone(),
            );
            tokio::spawn(async move {
                let (mut ok, mut failed, mut hung, mut slowest) =
                    (0u64, 0u64, 0u64, Duration::ZERO);
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let started_in = epoch.load(Ordering::SeqCst);
                    let started = Instant::now();
                    let outcome = timeout(CALL_BOUND, async {
                        let session = pool.session(&k).await.map_err(|e| format!("{e:?}"))?;
                        if (w + i).is_multiple_of(2) {
                            list_pods(&session).await
                        } else {
                            list_nodes(&session).await
                        }
                    })
                    .await;
                    slowest = slowest.max(started.elapsed());
                    match outcome {
                        Ok(Ok(_)) => {
                            ok += 1;
                            let slot = usize::try_from(started_in).unwrap();
                            ok_in_epoch[slot].fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(Err(_)) => failed += 1,
                        Err(_) => hung += 1,
                    }
                    i += 1;
                }
                (ok, failed, hung, slowest)
            })
        })
        .collect();

    for (cut, gap) in GAPS.iter().enumerate() {
        sleep(ms(*gap)).await;
        proxy.cut_all();
        epoch.store(u64::try_from(cut + 1).unwrap(), Ordering::SeqCst);
        if cut % 2 == 1 {
            assert!(
                wait_until(Duration::from_secs(3), || ok_in_epoch[cut + 1]
                    .load(Ordering::SeqCst)
                    > 0)
                .await,
                "cut {cut}: no call started after it succeeded within 3 s (TLS {}, open {}, \
                 accepted {}, {:?})",
                server.tls_connections(),
                server.open_connections(),
                proxy.accepted(),
                pool.connection_stats()
            );
        }
    }
    sleep(ms(100)).await;
    stop.store(true, Ordering::SeqCst);
    let counts = timeout(Duration::from_secs(10), join_all(workers))
        .await
        .expect("workers did not stop");
    let (mut ok, mut failed, mut hung, mut slowest) = (0, 0, 0, Duration::ZERO);
    for c in counts {
        let c = c.unwrap();
        ok += c.0;
        failed += c.1;
        hung += c.2;
        slowest = slowest.max(c.3);
    }
    assert_eq!(
        hung, 0,
        "{hung} calls waited past {CALL_BOUND:?} (ok {ok}, failed {failed})"
    );
    assert!(ok > 100, "ok {ok}, failed {failed}");
    assert!(
        ok_in_epoch[CUTS].load(Ordering::SeqCst) > 0,
        "nothing succeeded after the last cut"
    );
    all_ok(&burst(&pool, &k, 20).await);
    assert!(
        wait_until(Duration::from_secs(3), || server.open_connections() == 1).await,
        "connections open at the server after the cuts: {}",
        server.open_connections()
    );
    let stats = pool.connection_stats();
    assert_eq!(
        (stats.http1_connections, stats.http1_fallbacks),
        (0, 0),
        "{stats:?}"
    );
    // A success after each of the 10 odd cuts needed a new connection.
    assert!(stats.http2_connections > 10, "{stats:?}");
    assert!(
        stats.http2_connections <= proxy.accepted() && server.tls_connections() <= proxy.accepted(),
        "{stats:?}, server TLS {}, proxy accepted {}",
        server.tls_connections(),
        proxy.accepted()
    );
    // Each cut ends at most the connection open and the one being opened: one replacement per
    // cut, not a connection per waiting call.
    assert!(
        server.tls_connections() <= u64::try_from(CUTS).unwrap() + 1,
        "{} TLS connections for {CUTS} cuts (ok {ok}, failed {failed}, slowest {slowest:?})",
        server.tls_connections()
    );
    assert_eq!(pool.stats().creations, 1);
}

// ---------------------------------------------------------------------------------------------
// 2. The connection dies at every phase: cut after exactly N bytes, either way.

// A reconnect carrying twelve waiting log reads (48 KiB each, two worker threads) is cut after
// exactly N bytes from the server (inside the TLS handshake, around SETTINGS, inside the first
// response's headers and body) or N bytes from the client (inside the ClientHello, the preface,
// the requests). Every call ends within 5 s; a call that succeeds got the whole log (no silent
// truncation); once the cut connection is gone, the next burst succeeds on one new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_after_n_bytes_at_every_phase_never_hangs() {
    const LOG: usize = 48 * 1024;
    let server = K8sServer::start().await.unwrap();
    set_log(&server, LOG);
    let proxy = Proxy::start(server.addr(), Mode::Forward).await;
    let pool = Arc::new(proxied_pool(&proxy, &server));
    let k = key("east");
    // One connection carrying one log read, measured at the proxy.
    let session = pool.session(&k).await.unwrap();
    assert_eq!(fetch_log(&session).await, Ok(LOG));
    let (down, up) = proxy.newest_bytes();
    drop(session);
    let (down, up) = (usize::try_from(down).unwrap(), usize::try_from(up).unwrap());
    assert!(down > LOG && up > 0, "down {down}, up {up}");
    let mut cuts: Vec<Mode> = [0, 1, 100, 600, 1200, 1800, 2400, 3000, 4000, 6000]
        .into_iter()
        .chain((1..8).map(|i| down * i / 8))
        .chain([down - 200, down - 1])
        .map(Mode::CutDown)
        .collect();
    cuts.extend(
        [0, 1500, 3000, down / 3, down * 2 / 3, down - 1]
            .into_iter()
            .map(Mode::RstDown),
    );
    cuts.extend(
        [0, 1, 200, 800, 1400, 1700, 2000]
            .into_iter()
            .chain((1..4).map(|i| up * i / 4))
            .chain([up - 1])
            .map(Mode::CutUp),
    );
    for mode in cuts {
        cut_and_settle(&proxy, || server.open_connections()).await;
        let results = on_a_new_connection(&proxy, &format!("{mode:?}"), || {
            proxy.clear_plan();
            proxy.plan([mode]);
            join_bounded(
                (0..12)
                    .map(|_| {
                        let (pool, k) = (pool.clone(), k.clone());
                        bounded_task(async move {
                            let session = pool.session(&k).await.map_err(|e| format!("{e:?}"))?;
                            fetch_log(&session).await
                        })
                    })
                    .collect(),
            )
        })
        .await;
        proxy.clear_plan();
        for r in results.iter().filter_map(|r| r.as_ref().ok()) {
            assert_eq!(
                *r, LOG,
                "{mode:?}: a log read succeeded with a truncated body"
            );
        }
        // Whatever is left of the cut connection goes; the next burst opens one connection.
        cut_and_settle(&proxy, || server.open_connections()).await;
        let tls_before = server.tls_connections();
        let after = join_bounded(
            (0..5)
                .map(|_| {
                    let (pool, k) = (pool.clone(), k.clone());
                    bounded_task(async move { call(&pool, &k).await })
                })
                .collect(),
        )
        .await;
        assert_eq!(
            failures(&after),
            0,
            "{mode:?}: a call after the cut connection was gone failed: {:?}",
            after.iter().find(|r| r.is_err())
        );
        assert_eq!(
            server.tls_connections(),
            tls_before + 1,
            "{mode:?}: the burst after the cut"
        );
    }
    assert_eq!(pool.stats().creations, 1);
    assert_eq!(pool.connection_stats().http1_connections, 0);
}

// ---------------------------------------------------------------------------------------------
// 3. Connection death while a response body streams.

/// A pool over a proxy that trickles the server's bytes (16 KiB every 5 ms), a 1 MiB log, and a
/// warm session.
async fn slow_body_setup(
    keep_alive: Option<(Duration, Duration)>,
    max_streams: Option<usize>,
) -> (K8sServer, Proxy, Arc<SessionPool>, usize) {
    const LOG: usize = 1024 * 1024;
    let server = K8sServer::start().await.unwrap();
    set_log(&server, LOG);
    let proxy = Proxy::start(
        server.addr(),
        Mode::Throttle {
            chunk: 16 * 1024,
            every: ms(5),
        },
    )
    .await;
    let mut builder =
        SessionPool::builder(KubeconfigSource::from_kubeconfig(proxy.kubeconfig(&server)))
            .knobs_from(|_| None);
    if let Some((interval, wait)) = keep_alive {
        builder = builder.http2_keep_alive(interval, wait);
    }
    if max_streams.is_some() {
        builder = builder.max_streams_per_session(max_streams);
    }
    let pool = Arc::new(builder.build());
    all_ok(&burst(&pool, &key("east"), 2).await);
    (server, proxy, pool, LOG)
}

/// Start `read` (a log read through the pool) and wait until 256 KiB of its body went through
/// the proxy; then run `kill` and return how long the read took to end after it, and its result.
async fn kill_mid_body<F, Fut>(
    proxy: &Proxy,
    pool: &Arc<SessionPool>,
    read: F,
    kill: impl FnOnce(),
) -> (Duration, Result<usize, String>)
where
    F: FnOnce(Arc<SessionPool>) -> Fut,
    Fut: std::future::Future<Output = Result<usize, String>> + Send + 'static,
{
    let (before, _) = proxy.newest_bytes();
    let task = bounded_task(read(pool.clone()));
    assert!(
        wait_until(Duration::from_secs(5), || proxy.newest_bytes().0
            >= before + 256 * 1024)
        .await,
        "the body never started"
    );
    assert!(!task.is_finished(), "the body was not slow enough");
    let killed = Instant::now();
    kill();
    let result = task.await.unwrap();
    (killed.elapsed(), result)
}

// A 1 MiB log streams slowly; the connection is cut (both sockets closed) a quarter of the way
// in. The read ends with an error within 2 s (not at the 295 s read timeout, not as a clean but
// truncated body), and the next read gets the whole log on a new connection. Both kube's whole-
// body read (`logs`) and a byte stream read to its end (`log_stream`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_while_a_body_streams_fails_the_read_promptly() {
    let (server, proxy, pool, log) = slow_body_setup(None, None).await;
    for streamed in [false, true] {
        let read = move |pool: Arc<SessionPool>| async move {
            let session = pool
                .session(&key("east"))
                .await
                .map_err(|e| format!("{e:?}"))?;
            if streamed {
                stream_log(&session).await
            } else {
                fetch_log(&session).await
            }
        };
        let (took, result) = kill_mid_body(&proxy, &pool, read, || proxy.cut_all()).await;
        assert!(
            result.is_err(),
            "streamed {streamed}: the read of a body cut at 256 KiB of {log} returned {result:?}"
        );
        assert!(
            took < Duration::from_secs(2),
            "streamed {streamed}: the read ended {took:?} after the cut: {result:?}"
        );
        let next = timeout(CALL_BOUND, async {
            let session = pool
                .session(&key("east"))
                .await
                .map_err(|e| format!("{e:?}"))?;
            stream_log(&session).await
        })
        .await
        .expect("the read after the cut hung");
        assert_eq!(next, Ok(log), "streamed {streamed}");
    }
    assert_eq!(server.tls_connections(), 3);
    assert!(wait_until(Duration::from_secs(3), || server.open_connections() == 1).await);
}

// The same body, but the connection is frozen a quarter of the way in (sockets open, nothing
// forwarded either way: a black hole, as a dead peer behind NAT). With keep-alive 100 ms / 200 ms
// the read fails within 2 s (detected by the unanswered PING), and the next read succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_while_a_body_streams_is_detected_by_keep_alive() {
    let (server, proxy, pool, log) = slow_body_setup(Some((ms(100), ms(200))), None).await;
    let read = |pool: Arc<SessionPool>| async move {
        let session = pool
            .session(&key("east"))
            .await
            .map_err(|e| format!("{e:?}"))?;
        stream_log(&session).await
    };
    let (took, result) = kill_mid_body(&proxy, &pool, read, || proxy.freeze_all()).await;
    assert!(result.is_err(), "a frozen body's read returned {result:?}");
    assert!(
        took < Duration::from_secs(2),
        "the read ended {took:?} after the freeze: {result:?}"
    );
    proxy.cut_all();
    let next = timeout(CALL_BOUND, async {
        let session = pool
            .session(&key("east"))
            .await
            .map_err(|e| format!("{e:?}"))?;
        fetch_log(&session).await
    })
    .await
    .expect("the read after the freeze hung");
    assert_eq!(next, Ok(log));
    assert_eq!(server.tls_connections(), 2);
}

// A caller holds a log stream, reads 64 KiB, then stops reading; the connection is cut mid-body
// (the session allows ONE stream). (a) Reading on afterwards drains what had arrived, then ends
// with an error within 2 s, not a clean truncated end and not a wait. (b) Dropping the unread
// stream after the cut frees the session's only stream: the next call succeeds at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_held_unread_across_a_cut_errors_when_read_and_frees_its_stream() {
    let (server, proxy, pool, log) = slow_body_setup(None, Some(1)).await;
    for read_on in [true, false] {
        let session = pool.session(&key("east")).await.unwrap();
        let (before, _) = proxy.newest_bytes();
        let mut stream = timeout(
            CALL_BOUND,
            Api::<Pod>::namespaced(session.client().clone(), SAMPLE_NAMESPACE)
                .log_stream(LOG_POD, &LogParams::default()),
        )
        .await
        .expect("the log stream did not start")
        .unwrap();
        let mut head = vec![0u8; 64 * 1024];
        timeout(CALL_BOUND, stream.read_exact(&mut head))
            .await
            .expect("the first 64 KiB did not come")
            .unwrap();
        assert!(
            // 64 KiB read and at least a default stream window (64 KiB) more in flight.
            wait_until(Duration::from_secs(5), || proxy.newest_bytes().0
                >= before + 120 * 1024)
            .await
        );
        let (at_cut, _) = proxy.newest_bytes();
        proxy.cut_all();
        assert!(
            at_cut < before + u64::try_from(log).unwrap(),
            "the whole body had passed before the cut"
        );
        sleep(ms(50)).await;
        if read_on {
            let mut rest = Vec::new();
            let cut = Instant::now();
            let read = timeout(Duration::from_secs(2), stream.read_to_end(&mut rest))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "reading a body cut mid-way hung ({} bytes read)",
                        rest.len()
                    )
                });
            assert!(
                read.is_err(),
                "a body cut at {} of {log} bytes read to a clean end: {} + {} bytes",
                at_cut - before,
                head.len(),
                rest.len()
            );
            assert!(cut.elapsed() < Duration::from_secs(2));
        } else {
            drop(stream);
        }
        drop(session);
        let next = timeout(CALL_BOUND, call(&pool, &key("east")))
            .await
            .unwrap_or_else(|_| panic!("read on {read_on}: the next call hung (stream leaked?)"));
        assert!(next.is_ok(), "read on {read_on}: {next:?}");
    }
    assert!(wait_until(Duration::from_secs(3), || server.open_connections() == 1).await);
    assert_eq!(server.tls_connections(), 3);
}

// ---------------------------------------------------------------------------------------------
// 4. Cancellation at the moment of a cut.

// Rounds of twelve calls through a session bounded to 4 streams (pod lists held 40 ms); the
// connection is cut at a varied moment and half the calls are aborted just before or just after
// it. The calls left end within 5 s; afterwards 20 calls succeed (a stream slot leaked by an
// aborted or failed call would leave them waiting) and the bound still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_cancelled_at_the_cut_leak_no_stream() {
    let server = K8sServer::start().await.unwrap();
    server.inject(PODS, Fault::latency(ms(40)));
    let proxy = Proxy::start(server.addr(), Mode::Forward).await;
    let pool = Arc::new(
        SessionPool::builder(KubeconfigSource::from_kubeconfig(proxy.kubeconfig(&server)))
            .knobs_from(|_| None)
            .max_streams_per_session(Some(4))
            .build(),
    );
    all_ok(&burst(&pool, &key("east"), 4).await);
    for round in 0..8u64 {
        let tasks = spawn_calls(&pool, 12);
        sleep(ms(round * 7 % 45)).await;
        let abort_first = round % 2 == 0;
        if abort_first {
            for t in tasks.iter().step_by(2) {
                t.abort();
            }
        }
        proxy.cut_all();
        if !abort_first {
            tokio::task::yield_now().await;
            for t in tasks.iter().skip(1).step_by(2) {
                t.abort();
            }
        }
        let results = join_bounded(tasks).await;
        assert_eq!(
            hung(&results),
            0,
            "round {round}: calls left after the cut hung ({} of {})",
            hung(&results),
            results.len()
        );
    }
    // The server's handlers of requests on cut connections run out their 40 ms (they would
    // count as in flight beside the new connection's); then the bound is sampled at the server.
    assert!(wait_until(Duration::from_secs(3), || server.in_flight() == 0).await);
    let calls = spawn_calls(&pool, 20);
    let mut peak = 0;
    while !calls.iter().all(|t| t.is_finished()) {
        peak = peak.max(server.in_flight());
        sleep(ms(1)).await;
    }
    let results = join_bounded(calls).await;
    assert_eq!(
        failures(&results),
        0,
        "calls after the cancelled rounds: {:?}",
        results.iter().find(|r| r.is_err())
    );
    assert!(
        (1..=4).contains(&peak),
        "in flight at the server (sampled): {peak}"
    );
    assert!(wait_until(Duration::from_secs(3), || server.open_connections() == 1).await);
    assert_eq!(pool.stats().creations, 1);
}

// ---------------------------------------------------------------------------------------------
// 5. GOAWAY.

/// Ten calls held on connection 1 of a server advertising `max_streams` streams; returns their
/// tasks once the server holds `held` of them.
async fn held_calls(
    server: &H2Server,
    pool: &Arc<SessionPool>,
    n: usize,
    held: u64,
) -> Vec<JoinHandle<Result<usize, String>>> {
    let tasks = spawn_calls(pool, n);
    assert!(
        wait_until(Duration::from_secs(5), || server.held() >= held).await,
        "not held: {}",
        server.summary()
    );
    tasks
}

// A graceful shutdown as hyper's and Go's servers send it (GOAWAY 2^31−1, then GOAWAY with the
// last stream received) while ten calls are held on the connection, which stays open. Calls made
// after it go out on a new connection at once — they do not wait for the old connection's streams
// (kube-apiserver's --goaway-chance sends exactly this to connections carrying watches) — and the
// held calls still get their answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_goaway_new_calls_do_not_wait_for_the_old_connection() {
    let server = H2Server::start(100, Behaviour::Answer).await;
    server.plan([Behaviour::Hold]);
    let pool = h2_pool(&server);
    let first = held_calls(&server, &pool, 10, 10).await;
    server.send(
        1,
        Cmd::GoAway {
            last: Last::Max,
            code: NO_ERROR,
        },
    );
    server.send(
        1,
        Cmd::GoAway {
            last: Last::Highest,
            code: NO_ERROR,
        },
    );
    sleep(ms(50)).await;
    let started = Instant::now();
    let later = join_bounded(spawn_calls(&pool, 10)).await;
    assert_eq!(
        failures(&later),
        0,
        "calls after a graceful GOAWAY: {:?}; {}",
        later.iter().find(|r| r.is_err()),
        server.summary()
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.held(), 10, "{}", server.summary());
    assert_eq!(server.tls(), 2, "{}", server.summary());
    server.send(1, Cmd::AnswerHeld);
    let first = join_bounded(first).await;
    assert_eq!(
        failures(&first),
        0,
        "streams the GOAWAY kept: {:?}",
        first.iter().find(|r| r.is_err())
    );
    server.send(1, Cmd::Close);
    assert!(
        wait_until(Duration::from_secs(3), || server.open() == 1).await,
        "{}",
        server.summary()
    );
    all_ok(&join_bounded(spawn_calls(&pool, 10)).await);
    assert_eq!(pool.connection_stats().http2_connections, 2);
    assert_eq!(server.tls(), 2);
    assert_eq!(pool.stats().creations, 1);
}

/// Thirty rounds: a graceful GOAWAY (2^31−1: every stream already sent will be processed) on the
/// session's connection, and ten calls made at that very moment (at once, after a yield, or 1 ms
/// later). Each call can go out on the old connection before the client read the GOAWAY (the
/// server answers it) or on the new one. Returns every round's results, checking as it goes that
/// no call waited and that each round opened at most one connection.
async fn calls_racing_graceful_goaways() -> (H2Server, Vec<Vec<Result<usize, String>>>) {
    let server = H2Server::start(100, Behaviour::Answer).await;
    let pool = h2_pool(&server);
    all_ok(&join_bounded(spawn_calls(&pool, 2)).await);
    let mut rounds = Vec::new();
    for round in 1..=30 {
        let n = usize::try_from(server.get(|s| &s.tcp)).unwrap();
        server.send(
            n,
            Cmd::GoAway {
                last: Last::Max,
                code: NO_ERROR,
            },
        );
        if round % 3 == 0 {
            tokio::task::yield_now().await;
        } else if round % 3 == 1 {
            sleep(ms(1)).await;
        }
        let results = join_bounded(spawn_calls(&pool, 10)).await;
        assert_eq!(hung(&results), 0, "round {round}: {}", server.summary());
        assert!(
            server.tls() <= u64::try_from(round).unwrap() + 1,
            "round {round}: more than one connection; {}",
            server.summary()
        );
        rounds.push(results);
    }
    all_ok(&join_bounded(spawn_calls(&pool, 10)).await);
    assert!(
        wait_until(Duration::from_secs(3), || server.open() == 1).await,
        "{}",
        server.summary()
    );
    (server, rounds)
}

// Calls made as a graceful GOAWAY arrives end within 5 s; one new connection per GOAWAY; the
// calls after the last one succeed and one connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_racing_a_graceful_goaway_end_promptly() {
    let (server, rounds) = calls_racing_graceful_goaways().await;
    assert_eq!(rounds.len(), 30);
    assert_eq!(server.get(|s| &s.refused) + server.get(|s| &s.ignored), 0);
}

// The same, counting failures: with the GOAWAY's last stream id at 2^31−1 the server processes
// every stream it receives (it refused and ignored none), so a failed call was never sent; by the
// failure table ("a request is sent in the instant its connection ends: it goes out on the next
// connection as soon as the old one has ended") none may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_racing_a_graceful_goaway_all_succeed() {
    let (server, rounds) = calls_racing_graceful_goaways().await;
    let refused = server.get(|s| &s.refused) + server.get(|s| &s.ignored);
    assert_eq!(refused, 0, "{}", server.summary());
    for (round, results) in rounds.iter().enumerate() {
        assert_eq!(
            failures(results),
            0,
            "round {}: a call that never reached the server (it refused nothing) failed: {:?}; {}",
            round + 1,
            results.iter().find(|r| r.is_err()),
            server.summary()
        );
    }
}

/// Connection 1 of a server advertising 4 streams answers one call (so its SETTINGS are in
/// force), then holds: 4 calls are held and 6 more wait beyond the stream limit. A graceful
/// GOAWAY (2^31−1, then the last stream) arrives and the connection stays open with its 4
/// streams; `later` calls are made right after. Returns (the 10 first calls' tasks, the later
/// calls' tasks, the instant of the GOAWAY).
async fn goaway_with_the_stream_limit_full(
    server: &H2Server,
    pool: &Arc<SessionPool>,
    later: usize,
) -> (
    Vec<JoinHandle<Result<usize, String>>>,
    Vec<JoinHandle<Result<usize, String>>>,
    Instant,
) {
    server.plan([Behaviour::HoldAfter(1)]);
    all_ok(&join_bounded(spawn_calls(pool, 1)).await);
    let first = held_calls(server, pool, 10, 4).await;
    sleep(ms(50)).await;
    assert_eq!(server.held(), 4, "{}", server.summary());
    let goaway = Instant::now();
    for last in [Last::Max, Last::Highest] {
        server.send(
            1,
            Cmd::GoAway {
                last,
                code: NO_ERROR,
            },
        );
    }
    (first, spawn_calls(pool, later), goaway)
}

/// Wait (up to 3 s) until `n` of `tasks` have finished; how long after `since` that was, if so.
async fn finished(
    tasks: &[JoinHandle<Result<usize, String>>],
    n: usize,
    since: Instant,
) -> Option<Duration> {
    let done = || tasks.iter().filter(|t| t.is_finished()).count() >= n;
    wait_until(Duration::from_secs(3), done)
        .await
        .then(|| since.elapsed())
}

// The server's stream limit is 4: four calls are held on connection 1 and six more wait beyond
// the limit when a graceful GOAWAY arrives; the connection stays open with its four streams. The
// six waiting calls and five made right after the GOAWAY end at once — none waits for the old
// connection's streams to end — and once the server serves on a new connection, every call
// succeeds; the four held calls still get their answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_with_the_stream_limit_full_no_call_waits_for_the_old_streams() {
    let server = H2Server::start(4, Behaviour::Answer).await;
    let pool = h2_pool(&server);
    let (first, later, goaway) = goaway_with_the_stream_limit_full(&server, &pool, 5).await;
    let queued = finished(&first, 6, goaway).await;
    let later_done = finished(&later, 5, goaway).await;
    let still_held = server.held();
    server.send(1, Cmd::AnswerHeld);
    let (first, later) = (join_bounded(first).await, join_bounded(later).await);
    assert!(
        queued.is_some() && later_done.is_some(),
        "calls waited for the old connection's streams after its GOAWAY (queued beyond the \
         limit ended: {queued:?}, later calls ended: {later_done:?}); {}",
        server.summary()
    );
    assert_eq!(still_held, 4, "{}", server.summary());
    assert_eq!(hung(&first) + hung(&later), 0, "{}", server.summary());
    assert!(
        first.iter().filter(|r| r.is_ok()).count() >= 4,
        "the four streams the GOAWAY kept: {first:?}"
    );
    all_ok(&join_bounded(spawn_calls(&pool, 10)).await);
    assert_eq!(server.tls(), 2, "{}", server.summary());
    assert_eq!(pool.stats().creations, 1);
}

// The same, counting failures: the six calls waiting beyond the stream limit were never sent on
// the old connection (it received 5 streams: the warm-up and the 4 held), so by the guide (K9: "a
// request the closed connection never started goes out on the new one"; K10: calls beyond the
// limit "wait inside the connection"; failure table: "requests it never started go out on the
// next connection") none of them may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_with_the_stream_limit_full_no_unsent_call_fails() {
    let server = H2Server::start(4, Behaviour::Answer).await;
    let pool = h2_pool(&server);
    let (first, _, goaway) = goaway_with_the_stream_limit_full(&server, &pool, 0).await;
    let _ = finished(&first, 6, goaway).await;
    server.send(1, Cmd::AnswerHeld);
    let first = join_bounded(first).await;
    assert_eq!(hung(&first), 0, "{}", server.summary());
    assert_eq!(
        server.streams_on(1),
        5,
        "connection 1 got more than the warm-up and the 4 held; {}",
        server.summary()
    );
    assert_eq!(
        failures(&first),
        0,
        "of the 6 calls waiting beyond the stream limit (never sent on connection 1), {} failed: \
         {:?}; {}",
        failures(&first),
        first.iter().find(|r| r.is_err()),
        server.summary()
    );
}

// The session's own stream bound (`max_streams_per_session(Some(4))`, server limit 100) is full
// with four calls held on connection 1 and six more wait for a slot when a graceful GOAWAY arrives;
// connection 1 stays open with its four streams (as it would with four watches or followed logs).
// K10 says "over HTTP/2 the bound is streams per connection … max_streams_per_session(Some(n))
// lowers it", K9 that a connection closed by GOAWAY "is replaced by the next request": the six
// should go out on a new connection at once. (They used to wait, with no second connection
// opened, until the old connection's streams ended — for as long as those streams lived: up to
// the 295 s read timeout; without one, for as long as a watch runs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_with_the_session_stream_bound_full_queued_calls_go_out_at_once() {
    let server = H2Server::start(100, Behaviour::Answer).await;
    server.plan([Behaviour::HoldAfter(1)]);
    let pool = Arc::new(
        SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig()))
            .knobs_from(|_| None)
            .max_streams_per_session(Some(4))
            .build(),
    );
    all_ok(&join_bounded(spawn_calls(&pool, 1)).await);
    let first = held_calls(&server, &pool, 10, 4).await;
    sleep(ms(50)).await;
    assert_eq!(server.held(), 4, "{}", server.summary());
    let goaway = Instant::now();
    for last in [Last::Max, Last::Highest] {
        server.send(
            1,
            Cmd::GoAway {
                last,
                code: NO_ERROR,
            },
        );
    }
    let queued = finished(&first, 6, goaway).await;
    let (still_held, connections) = (server.held(), server.tls());
    server.send(1, Cmd::AnswerHeld);
    let first = join_bounded(first).await;
    assert_eq!(hung(&first), 0, "{}", server.summary());
    assert!(
        queued.is_some(),
        "3 s after the GOAWAY the six calls queued on the session's bound still waited for the \
         old connection's {still_held} streams ({connections} connection(s) opened); {}",
        server.summary()
    );
}

/// Ten calls held on connection 1; GOAWAY (NO_ERROR) keeping only the first four: the six above
/// its last stream id were, by RFC 9113 §6.8, never processed. Returns (the calls, whether six of
/// them ended within 3 s of the GOAWAY while the four were still held, and how long that took).
async fn goaway_refusing_six(
    server: &H2Server,
    pool: &Arc<SessionPool>,
) -> (Vec<Result<usize, String>>, Option<Duration>) {
    let first = held_calls(server, pool, 10, 10).await;
    let goaway = Instant::now();
    server.send(
        1,
        Cmd::GoAway {
            last: Last::KeepFirst(4),
            code: NO_ERROR,
        },
    );
    let refused_done = finished(&first, 6, goaway).await;
    server.send(1, Cmd::AnswerHeld);
    (join_bounded(first).await, refused_done)
}

// GOAWAY refusing six of ten held streams: the six end within 3 s (they do not wait for the four
// kept ones), the four get their answers, and later calls succeed on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_refusing_streams_ends_them_promptly() {
    let server = H2Server::start(100, Behaviour::Answer).await;
    server.plan([Behaviour::Hold]);
    let pool = h2_pool(&server);
    let (results, refused_done) = goaway_refusing_six(&server, &pool).await;
    assert!(
        refused_done.is_some(),
        "calls refused by GOAWAY still waited 3 s later: {}",
        server.summary()
    );
    assert_eq!(hung(&results), 0, "{}", server.summary());
    assert!(
        results.iter().filter(|r| r.is_ok()).count() >= 4,
        "the four streams the GOAWAY kept: {results:?}"
    );
    all_ok(&join_bounded(spawn_calls(&pool, 10)).await);
    assert_eq!(server.tls(), 2, "{}", server.summary());
}

// The same, counting failures: the six refused streams were never processed by the server (RFC
// 9113 §6.8: "can be safely retried"), so "requests it never started go out on the next
// connection" would have them succeed on connection 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_refused_streams_go_out_on_the_next_connection() {
    let server = H2Server::start(100, Behaviour::Answer).await;
    server.plan([Behaviour::Hold]);
    let pool = h2_pool(&server);
    let (results, _) = goaway_refusing_six(&server, &pool).await;
    assert_eq!(
        failures(&results),
        0,
        "calls the server never processed (above the GOAWAY's last stream id) failed instead of \
         going out on the next connection: {:?}; {}",
        results.iter().find(|r| r.is_err()),
        server.summary()
    );
}

// GOAWAY with ten streams held, three ways: (a) INTERNAL_ERROR keeping every held stream, then
// the socket closes; (b) NO_ERROR keeping every held stream, then the socket closes without an
// answer (a server whose grace period ran out); (c) ENHANCE_YOUR_CALM with last stream 0, socket
// left open. The ten calls end within 3 s — failed in (a) and (b), where the connection died under
// them — and the next calls succeed on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_then_close_or_with_an_error_ends_the_calls_promptly() {
    let cases = [
        (Last::Highest, INTERNAL_ERROR, true),
        (Last::Highest, NO_ERROR, true),
        (Last::KeepFirst(0), ENHANCE_YOUR_CALM, false),
    ];
    for (last, code, close) in cases {
        let what = format!("GOAWAY {last:?} code {code}, close {close}");
        let server = H2Server::start(100, Behaviour::Answer).await;
        server.plan([Behaviour::Hold]);
        let pool = h2_pool(&server);
        let first = held_calls(&server, &pool, 10, 10).await;
        let started = Instant::now();
        server.send(1, Cmd::GoAway { last, code });
        if close {
            server.send(1, Cmd::Close);
        }
        let results = join_bounded(first).await;
        let took = started.elapsed();
        assert_eq!(hung(&results), 0, "{what}: {}", server.summary());
        assert!(
            took < Duration::from_secs(3),
            "{what}: the calls ended {took:?} after the GOAWAY; {}",
            server.summary()
        );
        if close {
            assert_eq!(failures(&results), 10, "{what}: {results:?}");
        }
        let later = join_bounded(spawn_calls(&pool, 10)).await;
        assert_eq!(
            failures(&later),
            0,
            "{what}: {:?}; {}",
            later.iter().find(|r| r.is_err()),
            server.summary()
        );
        assert_eq!(server.tls(), 2, "{what}: {}", server.summary());
    }
}

// A POST whose 1 MiB body is blocked on flow control (the server never opens its window beyond
// the initial 64 KiB) when the connection closes: the call fails within 2 s, and the next calls
// succeed on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_while_a_request_body_waits_for_flow_control_fails_promptly() {
    let server = H2Server::start(100, Behaviour::Answer).await;
    server.plan([Behaviour::Hold]);
    let pool = h2_pool(&server);
    let upload = {
        let pool = pool.clone();
        bounded_task(async move {
            let session = pool
                .session(&key("east"))
                .await
                .map_err(|e| format!("{e:?}"))?;
            let config_map = ConfigMap {
                metadata: ObjectMeta {
                    name: Some("big".into()),
                    ..ObjectMeta::default()
                },
                data: Some(BTreeMap::from([(
                    "blob".to_owned(),
                    "x".repeat(1024 * 1024),
                )])),
                ..ConfigMap::default()
            };
            Api::<ConfigMap>::namespaced(session.client().clone(), SAMPLE_NAMESPACE)
                .create(&PostParams::default(), &config_map)
                .await
                .map(|_| 0)
                .map_err(|e| format!("{e:?}"))
        })
    };
    if !wait_until(Duration::from_secs(5), || server.held() == 1).await {
        panic!("{}; {:?}", server.summary(), upload.await);
    }
    sleep(ms(100)).await;
    assert!(!upload.is_finished());
    let closed = Instant::now();
    server.send(1, Cmd::Close);
    let result = upload.await.unwrap();
    let took = closed.elapsed();
    assert!(result.is_err(), "{result:?}");
    assert!(
        took < Duration::from_secs(2),
        "the blocked upload ended {took:?} after the close: {result:?}"
    );
    all_ok(&join_bounded(spawn_calls(&pool, 5)).await);
    assert_eq!(server.tls(), 2, "{}", server.summary());
}

// A draining server: every connection gets GOAWAY (last stream 0) right after SETTINGS and is left
// open. A burst of ten calls ends within 5 s (a session resending "never started" requests must
// not loop forever), opening a bounded number of connections; once the server serves again, the
// next burst succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_server_goaway_on_every_connection_ends_calls() {
    let server = H2Server::start(100, Behaviour::GoAwayAtOnce(NO_ERROR)).await;
    let pool = h2_pool(&server);
    let started = Instant::now();
    let results = join_bounded(spawn_calls(&pool, 10)).await;
    let took = started.elapsed();
    assert_eq!(
        hung(&results),
        0,
        "calls to a draining server hung; {}",
        server.summary()
    );
    assert!(took < CALL_BOUND, "{took:?}; {}", server.summary());
    let draining = server.get(|s| &s.tcp);
    assert!(
        draining <= 20,
        "{draining} connections for ten calls to a draining server; {}",
        server.summary()
    );
    server.set_default(Behaviour::Answer);
    sleep(ms(20)).await;
    let results = join_bounded(spawn_calls(&pool, 10)).await;
    assert_eq!(
        failures(&results),
        0,
        "{:?}; {}",
        results.iter().find(|r| r.is_err()),
        server.summary()
    );
    assert!(
        wait_until(Duration::from_secs(3), || server.open() == 1).await,
        "{}",
        server.summary()
    );
}

// A reconnect cut during its TLS handshake (or just after) while 40 calls wait for it, then a
// reconnect that gets GOAWAY at once while 40 calls wait for it: every call ends within 5 s, and
// the next calls succeed on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_cut_in_handshake_then_goaway_with_many_waiting() {
    let server = H2Server::start(100, Behaviour::Answer).await;
    let proxy = Proxy::start(server.addr, Mode::Forward).await;
    let pool = Arc::new(pool_for(redirect(server.kubeconfig(), proxy.port)));
    all_ok(&join_bounded(spawn_calls(&pool, 5)).await);
    for cut in [0usize, 50, 500, 1500, 3000] {
        cut_and_settle(&proxy, || server.open()).await;
        on_a_new_connection(&proxy, &format!("cut at {cut}"), || {
            proxy.clear_plan();
            server.clear_plan();
            proxy.plan([Mode::CutDown(cut)]);
            join_bounded(spawn_calls(&pool, 40))
        })
        .await;
        proxy.clear_plan();
        cut_and_settle(&proxy, || server.open()).await;
        on_a_new_connection(&proxy, &format!("GOAWAY after the cut at {cut}"), || {
            server.clear_plan();
            server.plan([Behaviour::GoAwayAtOnce(NO_ERROR)]);
            join_bounded(spawn_calls(&pool, 40))
        })
        .await;
        server.clear_plan();
        let results = join_bounded(spawn_calls(&pool, 10)).await;
        assert_eq!(
            failures(&results),
            0,
            "after the GOAWAY (cut at {cut}): {:?}; {}",
            results.iter().find(|r| r.is_err()),
            server.summary()
        );
    }
    assert!(
        wait_until(Duration::from_secs(3), || server.open() == 1).await,
        "{}",
        server.summary()
    );
    assert_eq!(pool.stats().creations, 1);
}

// ---------------------------------------------------------------------------------------------
// Streams refused with RST_STREAM(REFUSED_STREAM) (added in session 35 with the resend of
// unprocessed requests).

// A stream the server resets with `REFUSED_STREAM` was not processed (RFC 9113 §8.7): the call
// is sent again, on the same connection, and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_are_sent_again() {
    let server = H2Server::start(100, Behaviour::RefuseFirst(2)).await;
    let pool = h2_pool(&server);
    all_ok(&join_bounded(spawn_calls(&pool, 1)).await);
    assert_eq!(server.get(|s| &s.reset_refused), 2, "{}", server.summary());
    assert_eq!(server.streams_on(1), 3, "{}", server.summary());
    assert_eq!(server.tls(), 1, "{}", server.summary());
    all_ok(&join_bounded(spawn_calls(&pool, 5)).await);
}

// A server that refuses every stream: the call fails after the guide's 3 resends (4 streams),
// promptly; it does not loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_refused_every_time_fails_after_three_resends() {
    let server = H2Server::start(100, Behaviour::RefuseFirst(u64::MAX)).await;
    let pool = h2_pool(&server);
    let started = Instant::now();
    let results = join_bounded(spawn_calls(&pool, 1)).await;
    assert_eq!(hung(&results), 0, "{}", server.summary());
    assert_eq!(failures(&results), 1, "{results:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(server.streams_on(1), 4, "{}", server.summary());
}
