//! Black-box suite: GOAWAY and the resend of unprocessed requests over HTTP/2 (K9, K10; guide,
//! "Behaviour" rows K9/K10 and the "Failure behaviour" rows on GOAWAY and `REFUSED_STREAM`).
//!
//! The promises under test:
//! 1. a connection is let go the moment the server's GOAWAY arrives: later calls, and calls
//!    waiting for a `max_streams_per_session(Some(n))` slot, go out on a new connection at once,
//!    while the old connection finishes the streams the GOAWAY kept (id ≤ its last stream id);
//! 2. a request the server never processed — its stream refused with
//!    `RST_STREAM(REFUSED_STREAM)` (sent again on the same connection), above a GOAWAY's last
//!    stream id, or sent as the GOAWAY arrived (RFC 9113 §6.8, §8.7) — is sent again, at most 3
//!    times per call; and (the other side of the same rule) a request the server may have
//!    processed is never sent twice;
//! 3. `max_streams_per_session(Some(n))` bounds each connection: a draining connection may hold
//!    up to `n` streams while the new one holds up to `n`, and no more.
//!
//! Public API only. The backend is a frame-level HTTP/2 server over TLS written here (rustls and
//! hand-made frames, grown from `blackbox_h2_hang.rs`): it records every request it receives —
//! the connection, the stream id, the name of the ConfigMap a POST creates (read from the request
//! body, so every call is identified) and whether the server *processed* it (a stream refused
//! with `REFUSED_STREAM`, or above a GOAWAY's last stream id, was not; every other stream it
//! received was) — and it holds, delays, answers, refuses, resets, GOAWAYs (graceful, with an
//! error code, at the handshake, split across TLS records, in the same record as responses) and
//! closes on a per-connection script or on command.
//!
//! Every call runs under a bound (3 s) so a hang shows up as a failure; the read timeout stays
//! at its 295 s default.
//!
//! No request the server processed was ever sent twice, in any scenario. The suite found three
//! defects, fixed in the same session (the tests ran ignored until then, now with the others):
//! - `goaway_at_the_handshake_never_fails_an_unsent_call`: when a connection received GOAWAY
//!   right after the server's SETTINGS (any last stream id, even 2^31−1), calls that never reached
//!   the server failed with `hyper::Error(Canceled, "connection was not ready")` or
//!   `Canceled, "connection closed"` — once, all ten calls of a cold burst, with no second
//!   connection opened (a fresh connection's unsent requests were not resent);
//! - `goaway_storm_unprocessed_calls_get_their_resends`: the same failures under GOAWAY storms
//!   (calls never received, or received once and refused, failed before their 3 resends);
//! - `goaway_then_http1_fallback_probes_once`: after a GOAWAY, a reconnect answered with HTTP/1.1
//!   sometimes probed twice (two fallbacks counted, one extra TLS connection).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_session::{KubeconfigSource, SessionKey, SessionPool};
use kube::api::{Api, PostParams};
use kube::config::Kubeconfig;
use testkit::k8s::{KubeAuth, build_kubeconfig};
use testkit::tls::{ClientAuth, TestCa};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep, sleep_until, timeout};

/// The bound on one call: far below the 295 s read timeout, far above what a call on loopback
/// takes (a few ms), even with three resends.
const CALL_BOUND: Duration = Duration::from_secs(3);

/// What a call cancelled on purpose (dropped by a short timeout) reports.
const CANCELLED: &str = "CANCELLED";

const NS: &str = "default";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn key() -> SessionKey {
    SessionKey::new("sub", "rg", "goaway")
}

/// Poll `cond` (real time) until it holds or `max` passes.
async fn wait_until(max: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + max;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        sleep(ms(2)).await;
    }
    cond()
}

static NAMES: AtomicU64 = AtomicU64::new(0);

/// A ConfigMap name used once in the whole file: the identity of one call at the server.
fn fresh_name(prefix: &str) -> String {
    format!("{prefix}-{}", NAMES.fetch_add(1, Ordering::SeqCst))
}

fn config_map(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("call".to_owned(), name.to_owned())])),
        ..ConfigMap::default()
    }
}

/// One call: a session from the pool, a POST creating ConfigMap `name` through it. The server
/// echoes the body, so the answer must name the same ConfigMap.
async fn create(pool: &SessionPool, name: &str) -> Result<(), String> {
    let session = pool
        .session(&key())
        .await
        .map_err(|e| format!("session: {e:?}"))?;
    let created = Api::<ConfigMap>::namespaced(session.client().clone(), NS)
        .create(&PostParams::default(), &config_map(name))
        .await
        .map_err(|e| format!("{e:?}"))?;
    match created.metadata.name.as_deref() {
        Some(n) if n == name => Ok(()),
        other => Err(format!("answered with another call's body: {other:?}")),
    }
}

/// [`create`] bounded by [`CALL_BOUND`]: `Err("HUNG …")` when the bound passed.
async fn bounded_create(pool: &SessionPool, name: &str) -> Result<(), String> {
    timeout(CALL_BOUND, create(pool, name))
        .await
        .unwrap_or_else(|_| Err(format!("HUNG: still waiting after {CALL_BOUND:?}")))
}

type Outcome = (String, Result<(), String>);

/// A bounded [`create`] of a fresh name on its own task.
fn spawn_create(pool: &Arc<SessionPool>, prefix: &str) -> JoinHandle<Outcome> {
    let pool = pool.clone();
    let name = fresh_name(prefix);
    tokio::spawn(async move {
        let result = bounded_create(&pool, &name).await;
        (name, result)
    })
}

fn spawn_creates(pool: &Arc<SessionPool>, prefix: &str, n: usize) -> Vec<JoinHandle<Outcome>> {
    (0..n).map(|_| spawn_create(pool, prefix)).collect()
}

/// Join tasks made by [`spawn_create`] (aborted ones are left out).
async fn join(tasks: Vec<JoinHandle<Outcome>>) -> Vec<Outcome> {
    timeout(Duration::from_secs(20), join_all(tasks))
        .await
        .expect("bounded tasks did not end")
        .into_iter()
        .filter_map(|joined| match joined {
            Ok(o) => Some(o),
            Err(e) if e.is_cancelled() => None,
            Err(e) => panic!("a call panicked: {e:?}"),
        })
        .collect()
}

fn finished(tasks: &[JoinHandle<Outcome>]) -> usize {
    tasks.iter().filter(|t| t.is_finished()).count()
}

fn is_hung(r: &Result<(), String>) -> bool {
    r.as_ref().is_err_and(|e| e.starts_with("HUNG"))
}

fn first_error(outcomes: &[Outcome]) -> Option<&Outcome> {
    outcomes.iter().find(|(_, r)| r.is_err())
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

// ---------------------------------------------------------------------------------------------
// A frame-level HTTP/2 server over TLS that records every request and can refuse, reset and
// GOAWAY in every way the suite needs.

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const ACK: u8 = 0x1;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const NO_ERROR: u32 = 0x0;
const INTERNAL_ERROR: u32 = 0x2;
const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;
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
fn status_200() -> Vec<u8> {
    let mut block = vec![0x88, 0x0f, 0x10, 0x10];
    block.extend_from_slice(b"application/json");
    block
}

/// A 200 with `body`, in DATA frames of at most 16 KiB (the client's SETTINGS_MAX_FRAME_SIZE).
fn response(stream: u32, body: &[u8]) -> Vec<u8> {
    let mut out = frame(HEADERS, END_HEADERS, stream, &status_200());
    let chunks: Vec<&[u8]> = body.chunks(16_384).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let flags = if i + 1 == chunks.len() { END_STREAM } else { 0 };
        out.extend(frame(DATA, flags, stream, chunk));
    }
    if chunks.is_empty() {
        out.extend(frame(DATA, END_STREAM, stream, &[]));
    }
    out
}

fn goaway_frame(last: u32, code: u32, debug: usize) -> Vec<u8> {
    let mut payload = last.to_be_bytes().to_vec();
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend(b"goaway-resend".iter().copied().cycle().take(debug));
    frame(GOAWAY, 0, 0, &payload)
}

/// Seventeen bytes that read as a GOAWAY frame (length 8, type 7, stream 0, last stream `last`,
/// NO_ERROR) to a reader that lost track of the frame boundaries. All below 0x80: valid UTF-8.
fn fake_goaway(last: u8) -> [u8; 17] {
    [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, last, 0, 0, 0, 0]
}

fn crafted_body() -> Vec<u8> {
    let mut body = b"frame-like bytes:".to_vec();
    for i in 0..6u8 {
        body.extend_from_slice(&fake_goaway(i));
        body.extend_from_slice(b"|");
    }
    body
}

/// What the server does with a request once its body is complete.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    /// Answer at once (a POST with its own body, a GET with a pod list).
    Answer,
    /// Hold until a command answers, refuses or drops it.
    Hold,
    /// Answer after this many ms.
    Delay(u64),
    /// `RST_STREAM(REFUSED_STREAM)`: not processed.
    Refuse,
    /// `RST_STREAM` with this code: processed (the server saw it and gave up on it).
    Reset(u32),
    /// GOAWAY (NO_ERROR) whose last stream id is below this stream: not processed.
    GoAwayBelow,
    /// Close the TCP connection at once: processed.
    Abort,
}

/// How one connection behaves.
#[derive(Clone, Debug)]
struct Plan {
    /// GOAWAY (last stream id, code) right after the server's SETTINGS.
    at_open: Option<(u32, u32)>,
    /// The acts for the 1st, 2nd, … stream of the connection, then `then`.
    script: Vec<Act>,
    then: Act,
    /// Close gracefully this long after a GOAWAY (with a last stream id below 2^31−1), once the
    /// streams it kept are answered.
    close_after_goaway: Option<Duration>,
    /// Answer GETs with [`crafted_body`], the response cut into tiny TLS records with frames
    /// of unknown types and PINGs carrying GOAWAY-like bytes in between.
    crafted: bool,
    /// Give request bodies no stream flow-control window beyond the initial 64 KiB (a larger body
    /// stalls half-sent) until [`Cmd::OpenWindows`].
    stall_bodies: bool,
    /// Negotiate HTTP/1.1 (ALPN http/1.1 only) and answer HTTP/1.1 requests.
    http1: bool,
}

impl Plan {
    fn acts(then: Act) -> Self {
        Plan {
            at_open: None,
            script: Vec::new(),
            then,
            close_after_goaway: None,
            crafted: false,
            stall_bodies: false,
            http1: false,
        }
    }

    fn script(script: impl Into<Vec<Act>>, then: Act) -> Self {
        Plan {
            script: script.into(),
            ..Plan::acts(then)
        }
    }

    fn goaway_at_open(last: u32, code: u32, then: Act) -> Self {
        Plan {
            at_open: Some((last, code)),
            ..Plan::acts(then)
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Last {
    /// 2^31 − 1: the first half of a graceful shutdown.
    Max,
    /// The highest stream received.
    Highest,
    /// The highest stream received minus this (refusing the newest streams still pending).
    HighestMinus(u32),
    /// The id of the n-th stream received on the connection (0: none).
    Nth(usize),
}

#[derive(Debug)]
enum Cmd {
    GoAway {
        last: Last,
        code: u32,
    },
    /// A GOAWAY (NO_ERROR) with `debug` bytes of debug data, written as two TLS records: its
    /// first `at` bytes, then, `pause` later, the rest. The server reads nothing in between.
    GoAwaySplit {
        last: Last,
        at: usize,
        pause: Duration,
        debug: usize,
    },
    /// Answer every held stream.
    AnswerHeld,
    /// Answer the n held streams with the lowest ids.
    AnswerFirst(usize),
    /// `RST_STREAM(REFUSED_STREAM)` on every held stream.
    RefuseHeld,
    /// `RST_STREAM(REFUSED_STREAM)` on every stream whose request body is still coming.
    RefusePartial,
    /// Stop stalling request bodies: open the window of every stream still coming.
    OpenWindows,
    /// Send the response headers (not the body) of every held stream; they stay held.
    HeadersHeld,
    /// close_notify, FIN, then read (and drop) whatever the client still sends until it closes.
    Close,
    /// Drop the socket at once.
    Abort,
    /// Several commands whose frames go out in one TLS record.
    Batch(Vec<Cmd>),
}

/// One request as the server received it.
#[derive(Clone, Debug)]
struct Receipt {
    conn: usize,
    stream: u32,
    /// The ConfigMap name of a POST, once its body is complete.
    name: Option<String>,
    /// False when the stream was refused (`REFUSED_STREAM`) or above a GOAWAY's last stream id.
    processed: bool,
    answered: bool,
}

#[derive(Clone, Debug, Default)]
struct ConnStat {
    /// Streams received.
    streams: u64,
    /// Streams open now at the server (received, not yet answered, reset, refused or
    /// cancelled), and the most at once.
    open: u64,
    max_open: u64,
    held: u64,
    goaway: bool,
    /// A GOAWAY went out with the server's SETTINGS (planned, or commanded before the TLS
    /// handshake ended).
    goaway_at_open: bool,
}

#[derive(Default)]
struct Stats {
    tcp: AtomicU64,
    tls: AtomicU64,
    open: AtomicU64,
    conns: Mutex<Vec<ConnStat>>,
    receipts: Mutex<Vec<Receipt>>,
}

struct OpenGuard(Arc<Stats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Server {
    addr: SocketAddr,
    ca: TestCa,
    stats: Arc<Stats>,
    plan: Arc<Mutex<VecDeque<Plan>>>,
    default: Arc<Mutex<Plan>>,
    conns: Arc<Mutex<Vec<mpsc::UnboundedSender<Cmd>>>>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Advertises `max_streams` concurrent streams; new connections follow `default` unless
    /// planned otherwise.
    async fn start(max_streams: u32, default: Plan) -> Self {
        testkit::tls::install_crypto_provider();
        let ca = TestCa::new("h2-goaway-resend").unwrap();
        let leaf = ca.server_leaf().unwrap();
        let mut config = (*ca.server_config(&leaf, ClientAuth::None).unwrap()).clone();
        let mut config_h1 = config.clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        config_h1.alpn_protocols = vec![b"http/1.1".to_vec()];
        let (config, config_h1) = (Arc::new(config), Arc::new(config_h1));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(Stats::default());
        let plan: Arc<Mutex<VecDeque<Plan>>> = Arc::default();
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
                            let this = plan
                                .lock()
                                .unwrap()
                                .pop_front()
                                .unwrap_or_else(|| default.lock().unwrap().clone());
                            let (tx, rx) = mpsc::unbounded_channel();
                            let index = {
                                let mut conns = conns.lock().unwrap();
                                conns.push(tx);
                                conns.len() - 1
                            };
                            stats.conns.lock().unwrap().push(ConnStat::default());
                            tasks.spawn(serve(
                                tcp,
                                index,
                                if this.http1 { config_h1.clone() } else { config.clone() },
                                this,
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
        Server {
            addr,
            ca,
            stats,
            plan,
            default,
            conns,
            task,
        }
    }

    /// The plans of the next connections, in order.
    fn plan(&self, plans: impl IntoIterator<Item = Plan>) {
        self.plan.lock().unwrap().extend(plans);
    }

    fn set_default(&self, plan: Plan) {
        *self.default.lock().unwrap() = plan;
    }

    /// Send `cmd` to connection `n` (1, 2, … in TCP accept order).
    fn send(&self, n: usize, cmd: Cmd) {
        if let Some(tx) = self.conns.lock().unwrap().get(n.wrapping_sub(1)) {
            let _ = tx.send(cmd);
        }
    }

    fn kubeconfig(&self) -> Kubeconfig {
        build_kubeconfig(
            &format!("https://{}", self.addr),
            self.ca.cert_pem(),
            "h2",
            KubeAuth::Token("goaway-resend-token"),
        )
    }

    /// TCP connections accepted so far (the newest is connection `connections()`).
    fn connections(&self) -> usize {
        usize::try_from(self.stats.tcp.load(Ordering::SeqCst)).unwrap()
    }

    fn tls(&self) -> u64 {
        self.stats.tls.load(Ordering::SeqCst)
    }

    fn conn(&self, n: usize) -> ConnStat {
        self.stats
            .conns
            .lock()
            .unwrap()
            .get(n.wrapping_sub(1))
            .cloned()
            .unwrap_or_default()
    }

    fn total_held(&self) -> u64 {
        self.stats
            .conns
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.held)
            .sum()
    }

    fn receipts(&self) -> Vec<Receipt> {
        self.stats.receipts.lock().unwrap().clone()
    }

    fn named(&self) -> usize {
        self.stats
            .receipts
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.name.is_some())
            .count()
    }

    fn receipts_of(&self, name: &str) -> Vec<Receipt> {
        self.stats
            .receipts
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.name.as_deref() == Some(name))
            .cloned()
            .collect()
    }

    fn by_name(&self) -> HashMap<String, Vec<Receipt>> {
        let mut map: HashMap<String, Vec<Receipt>> = HashMap::new();
        for r in self.stats.receipts.lock().unwrap().iter() {
            if let Some(name) = &r.name {
                map.entry(name.clone()).or_default().push(r.clone());
            }
        }
        map
    }

    fn summary(&self) -> String {
        let receipts = self.receipts();
        let conns = self.stats.conns.lock().unwrap().clone();
        format!(
            "server: tcp {}, tls {}, open {}, requests {} ({} not processed, {} answered); \
             streams per connection {:?}, most open at once per connection {:?}",
            self.connections(),
            self.tls(),
            self.stats.open.load(Ordering::SeqCst),
            receipts.len(),
            receipts.iter().filter(|r| !r.processed).count(),
            receipts.iter().filter(|r| r.answered).count(),
            conns.iter().map(|c| c.streams).collect::<Vec<_>>(),
            conns.iter().map(|c| c.max_open).collect::<Vec<_>>(),
        )
    }
}

fn describe(receipts: &[Receipt]) -> String {
    receipts
        .iter()
        .map(|r| {
            format!(
                "conn {} stream {} {}",
                r.conn + 1,
                r.stream,
                if r.processed {
                    "processed"
                } else {
                    "not processed"
                }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The connections from the first a call was received on to two after the last: their streams
/// and whether a GOAWAY came with their SETTINGS.
fn around(server: &Server, ordered: &[Receipt]) -> String {
    let (Some(first), Some(last)) = (ordered.first(), ordered.last()) else {
        return "never received".to_owned();
    };
    (first.conn + 1..=last.conn + 3)
        .map(|n| {
            let c = server.conn(n);
            format!(
                "conn {n}: {} streams{}",
                c.streams,
                if c.goaway_at_open {
                    ", GOAWAY at the handshake"
                } else {
                    ""
                }
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The resend promises, call by call: a request the server processed is never sent again, no
/// request is received more than 4 times (3 resends), a call that succeeded was processed
/// exactly once, no call hung, no call the server answered failed; with `strict`, a call that
/// failed although the server never processed it was sent 4 times (it spent its 3 resends).
fn violations(server: &Server, outcomes: &[Outcome], strict: bool) -> Vec<String> {
    let by_name = server.by_name();
    let mut found = Vec::new();
    for (name, result) in outcomes {
        let receipts = by_name.get(name).cloned().unwrap_or_default();
        let processed = receipts.iter().filter(|r| r.processed).count();
        let sends = receipts.len();
        let what = || {
            format!(
                "{name} → {result:?}; received {sends}x: {}",
                describe(&receipts)
            )
        };
        // In the order the client sent them: by connection, then stream id (the server's
        // connections record concurrently).
        let mut ordered = receipts.clone();
        ordered.sort_by_key(|r| (r.conn, r.stream));
        if processed > 1 {
            found.push(format!("processed {processed} times: {}", what()));
        } else if processed == 1 && !ordered.last().is_some_and(|r| r.processed) {
            found.push(format!(
                "sent again after the server processed it: {}",
                what()
            ));
        }
        if sends > 4 {
            found.push(format!("received more than 4 times: {}", what()));
        }
        match result {
            Err(e) if e.starts_with("HUNG") => found.push(format!("hung: {}", what())),
            Ok(()) if processed != 1 => found.push(format!("succeeded unprocessed: {}", what())),
            Err(e) if e != CANCELLED && receipts.iter().any(|r| r.answered) => found.push(format!(
                "the server answered it, yet the call failed: {}",
                what()
            )),
            // Its resends spent: the error is the server's GOAWAY or the connection's end.
            Err(e)
                if strict
                    && e != CANCELLED
                    && processed == 0
                    && !(e.contains("GoAway") || e.contains("Canceled")) =>
            {
                found.push(format!(
                    "never processed, yet failed with another error after {sends} send(s): {}; \
                     around them: {}",
                    what(),
                    around(server, &ordered)
                ))
            }
            _ => {}
        }
    }
    found
}

fn assert_no_violations(server: &Server, outcomes: &[Outcome], strict: bool, what: &str) {
    let found = violations(server, outcomes, strict);
    assert!(
        found.is_empty(),
        "{what}: {} violation(s) in {} calls, first ones: {:#?}; {}",
        found.len(),
        outcomes.len(),
        &found[..found.len().min(5)],
        server.summary()
    );
}

/// A stream being received (its body not yet complete).
struct Pending {
    receipt: usize,
    body: Vec<u8>,
    get: bool,
    /// None: ignored (above a GOAWAY's last stream id).
    act: Option<Act>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Close {
    Graceful,
    Abort,
    Peer,
}

/// One connection's HTTP/2 state (the TLS is handled by [`serve`]).
struct H2Conn {
    index: usize,
    plan: Plan,
    stats: Arc<Stats>,
    plain: Vec<u8>,
    /// Frames for the next TLS record.
    out: Vec<u8>,
    /// Whole TLS records to write, in order, before `out`.
    records: VecDeque<Vec<u8>>,
    /// The rest of a split GOAWAY: written after the pause.
    tail: Option<(Duration, Vec<u8>)>,
    preface: bool,
    is_open: bool,
    before_open: Vec<Cmd>,
    streams: HashMap<u32, Pending>,
    bodies: HashMap<u32, (usize, bool, Vec<u8>)>,
    held: Vec<u32>,
    delayed: Vec<(Instant, u32)>,
    open: HashSet<u32>,
    received: Vec<u32>,
    highest: u32,
    goaway_last: Option<u32>,
    goaway_at: Option<Instant>,
    close: Option<Close>,
    rng: u64,
}

impl H2Conn {
    fn new(index: usize, plan: Plan, stats: Arc<Stats>) -> Self {
        H2Conn {
            index,
            plan,
            stats,
            plain: Vec::new(),
            out: Vec::new(),
            records: VecDeque::new(),
            tail: None,
            preface: false,
            is_open: false,
            before_open: Vec::new(),
            streams: HashMap::new(),
            bodies: HashMap::new(),
            held: Vec::new(),
            delayed: Vec::new(),
            open: HashSet::new(),
            received: Vec::new(),
            highest: 0,
            goaway_last: None,
            goaway_at: None,
            close: None,
            rng: 0x2545_f491_4f6c_dd1d ^ (index as u64 + 1),
        }
    }

    fn sync(&self) {
        let mut conns = self.stats.conns.lock().unwrap();
        let c = &mut conns[self.index];
        c.open = self.open.len() as u64;
        c.max_open = c.max_open.max(c.open);
        c.held = self.held.len() as u64;
        c.goaway = self.goaway_last.is_some();
    }

    fn receipt(&self, idx: usize, f: impl FnOnce(&mut Receipt)) {
        f(&mut self.stats.receipts.lock().unwrap()[idx]);
    }

    fn push_record(&mut self, record: Vec<u8>) {
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            self.records.push_back(out);
        }
        self.records.push_back(record);
    }

    fn on_open(&mut self, max_streams: u32) {
        self.is_open = true;
        if self.plan.http1 {
            return;
        }
        let mut settings = vec![0x0, 0x3];
        settings.extend_from_slice(&max_streams.to_be_bytes());
        self.out.extend(frame(SETTINGS, 0, 0, &settings));
        if let Some((last, code)) = self.plan.at_open {
            self.go_away(last, code, 8);
        }
        for cmd in std::mem::take(&mut self.before_open) {
            self.command(cmd);
        }
        if self.goaway_last.is_some() {
            self.stats.conns.lock().unwrap()[self.index].goaway_at_open = true;
        }
    }

    /// HTTP/1.1: answer every complete request (a GET with a pod list, a POST with its own
    /// body), recorded like a stream (numbered 1, 2, … on the connection).
    fn parse_http1(&mut self) {
        while let Some(end) = self.plain.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&self.plain[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if self.plain.len() < end + 4 + length {
                return;
            }
            let body: Vec<u8> = self.plain[end + 4..end + 4 + length].to_vec();
            self.plain.drain(..end + 4 + length);
            let name = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["metadata"]["name"].as_str().map(str::to_owned));
            let stream = u32::try_from(self.received.len()).unwrap() + 1;
            self.received.push(stream);
            self.stats.receipts.lock().unwrap().push(Receipt {
                conn: self.index,
                stream,
                name,
                processed: true,
                answered: true,
            });
            self.stats.conns.lock().unwrap()[self.index].streams += 1;
            let answer: &[u8] = if body.is_empty() { POD_LIST } else { &body };
            self.out.extend_from_slice(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    answer.len()
                )
                .as_bytes(),
            );
            self.out.extend_from_slice(answer);
        }
    }

    fn parse(&mut self) {
        if !self.preface {
            if self.plain.len() < PREFACE.len() {
                return;
            }
            if &self.plain[..PREFACE.len()] != PREFACE {
                self.close = Some(Close::Abort);
                return;
            }
            self.plain.drain(..PREFACE.len());
            self.preface = true;
        }
        while self.plain.len() >= 9 && self.close.is_none() {
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
            HEADERS => self.headers(stream, flags),
            DATA => self.data(stream, flags, payload),
            RST_STREAM => self.client_reset(stream),
            _ => {}
        }
    }

    fn headers(&mut self, stream: u32, flags: u8) {
        let ignored = self.goaway_last.is_some_and(|last| stream > last);
        let receipt = {
            let mut receipts = self.stats.receipts.lock().unwrap();
            receipts.push(Receipt {
                conn: self.index,
                stream,
                name: None,
                processed: !ignored,
                answered: false,
            });
            receipts.len() - 1
        };
        self.stats.conns.lock().unwrap()[self.index].streams += 1;
        self.received.push(stream);
        self.highest = self.highest.max(stream);
        let act = if ignored {
            None
        } else {
            self.open.insert(stream);
            let n = self.received.len();
            Some(
                self.plan
                    .script
                    .get(n - 1)
                    .copied()
                    .unwrap_or(self.plan.then),
            )
        };
        let pending = Pending {
            receipt,
            body: Vec::new(),
            get: flags & END_STREAM != 0,
            act,
        };
        if pending.get {
            self.complete(stream, pending);
        } else {
            self.streams.insert(stream, pending);
        }
        self.sync();
    }

    fn data(&mut self, stream: u32, flags: u8, payload: &[u8]) {
        if !payload.is_empty() {
            // Give the connection window back (request bodies would exhaust it).
            let n = u32::try_from(payload.len()).unwrap();
            self.out
                .extend(frame(WINDOW_UPDATE, 0, 0, &n.to_be_bytes()));
        }
        if let Some(p) = self.streams.get_mut(&stream) {
            p.body.extend_from_slice(payload);
            if !payload.is_empty() && !self.plan.stall_bodies && flags & END_STREAM == 0 {
                let n = u32::try_from(payload.len()).unwrap();
                self.out
                    .extend(frame(WINDOW_UPDATE, 0, stream, &n.to_be_bytes()));
            }
        }
        if flags & END_STREAM != 0
            && let Some(p) = self.streams.remove(&stream)
        {
            self.complete(stream, p);
        }
    }

    fn complete(&mut self, stream: u32, p: Pending) {
        if !p.get {
            let name = serde_json::from_slice::<serde_json::Value>(&p.body)
                .ok()
                .and_then(|v| v["metadata"]["name"].as_str().map(str::to_owned));
            self.receipt(p.receipt, |r| r.name = name);
        }
        let Some(act) = p.act else { return };
        self.bodies.insert(stream, (p.receipt, p.get, p.body));
        match act {
            Act::Answer => self.answer(stream),
            Act::Hold => self.held.push(stream),
            Act::Delay(n) => self.delayed.push((Instant::now() + ms(n), stream)),
            Act::Refuse => self.reset(stream, REFUSED_STREAM),
            Act::Reset(code) => self.reset(stream, code),
            Act::GoAwayBelow => {
                self.go_away(stream.saturating_sub(2), NO_ERROR, 8);
                // Above the GOAWAY's last stream id: go_away dropped it as not processed.
                if let Some((receipt, _, _)) = self.bodies.remove(&stream) {
                    self.receipt(receipt, |r| r.processed = false);
                    self.open.remove(&stream);
                }
            }
            Act::Abort => self.close = Some(Close::Abort),
        }
        self.sync();
    }

    fn answer(&mut self, stream: u32) {
        let Some((receipt, get, body)) = self.bodies.remove(&stream) else {
            return;
        };
        self.receipt(receipt, |r| r.answered = true);
        self.open.remove(&stream);
        if get && self.plan.crafted {
            self.crafted_response(stream);
        } else if get {
            self.out.extend(response(stream, POD_LIST));
        } else {
            self.out.extend(response(stream, &body));
        }
    }

    /// A response with [`crafted_body`] in three DATA frames (the second padded), frames of
    /// unknown types and a PING carrying GOAWAY-like bytes between them, cut into TLS records of
    /// 1 to 23 bytes.
    fn crafted_response(&mut self, stream: u32) {
        let body = crafted_body();
        let fake = fake_goaway(0);
        let mut bytes = frame(0xfa, 0, 0, &fake);
        bytes.extend(frame(PING, 0, 0, &fake[..8]));
        bytes.extend(frame(HEADERS, END_HEADERS, stream, &status_200()));
        let (a, rest) = body.split_at(7);
        let (b, c) = rest.split_at(rest.len() / 2);
        bytes.extend(frame(DATA, 0, stream, a));
        let mut padded = vec![5u8];
        padded.extend_from_slice(b);
        padded.extend_from_slice(&[0; 5]);
        bytes.extend(frame(DATA, PADDED, stream, &padded));
        bytes.extend(frame(0xfb, 0, stream, &fake));
        bytes.extend(frame(DATA, END_STREAM, stream, c));
        let mut i = 0;
        while i < bytes.len() {
            let n = 1 + usize::try_from(xorshift(&mut self.rng) % 23).unwrap();
            let end = (i + n).min(bytes.len());
            self.push_record(bytes[i..end].to_vec());
            i = end;
        }
    }

    fn reset(&mut self, stream: u32, code: u32) {
        self.held.retain(|&s| s != stream);
        if let Some((receipt, _, _)) = self.bodies.remove(&stream)
            && code == REFUSED_STREAM
        {
            self.receipt(receipt, |r| r.processed = false);
        }
        self.open.remove(&stream);
        self.out
            .extend(frame(RST_STREAM, 0, stream, &code.to_be_bytes()));
    }

    fn client_reset(&mut self, stream: u32) {
        self.streams.remove(&stream);
        self.bodies.remove(&stream);
        self.held.retain(|&s| s != stream);
        self.delayed.retain(|&(_, s)| s != stream);
        self.open.remove(&stream);
        self.sync();
    }

    fn last(&self, last: Last) -> u32 {
        match last {
            Last::Max => MAX_STREAM_ID,
            Last::Highest => self.highest,
            Last::HighestMinus(d) => self.highest.saturating_sub(d),
            Last::Nth(n) => n
                .checked_sub(1)
                .and_then(|i| self.received.get(i))
                .copied()
                .unwrap_or(0),
        }
    }

    /// Record a GOAWAY with this last stream id (never raised) and drop, as not processed,
    /// every stream above it; returns the frame (not yet queued).
    fn go_away_frame(&mut self, last: u32, code: u32, debug: usize) -> Vec<u8> {
        let last = self.goaway_last.map_or(last, |l| l.min(last));
        self.goaway_last = Some(last);
        if last < MAX_STREAM_ID && self.goaway_at.is_none() {
            self.goaway_at = Some(Instant::now());
        }
        let above: Vec<u32> = self.open.iter().copied().filter(|&s| s > last).collect();
        for stream in above {
            self.open.remove(&stream);
            self.held.retain(|&s| s != stream);
            self.delayed.retain(|&(_, s)| s != stream);
            let receipt = self
                .bodies
                .remove(&stream)
                .map(|b| b.0)
                .or_else(|| self.streams.get(&stream).map(|p| p.receipt));
            if let Some(p) = self.streams.get_mut(&stream) {
                p.act = None;
            }
            if let Some(receipt) = receipt {
                self.receipt(receipt, |r| r.processed = false);
            }
        }
        self.sync();
        goaway_frame(last, code, debug)
    }

    fn go_away(&mut self, last: u32, code: u32, debug: usize) {
        let f = self.go_away_frame(last, code, debug);
        self.out.extend(f);
    }

    fn command(&mut self, cmd: Cmd) {
        if !self.is_open {
            self.before_open.push(cmd);
            return;
        }
        match cmd {
            Cmd::GoAway { last, code } => {
                let last = self.last(last);
                self.go_away(last, code, 8);
            }
            Cmd::GoAwaySplit {
                last,
                at,
                pause,
                debug,
            } => {
                let last = self.last(last);
                let f = self.go_away_frame(last, NO_ERROR, debug);
                let at = at.min(f.len());
                self.push_record(f[..at].to_vec());
                self.tail = Some((pause, f[at..].to_vec()));
            }
            Cmd::AnswerHeld => {
                for stream in std::mem::take(&mut self.held) {
                    self.answer(stream);
                }
            }
            Cmd::AnswerFirst(n) => {
                self.held.sort_unstable();
                let n = n.min(self.held.len());
                for stream in self.held.drain(..n).collect::<Vec<_>>() {
                    self.answer(stream);
                }
            }
            Cmd::RefuseHeld => {
                for stream in std::mem::take(&mut self.held) {
                    self.reset(stream, REFUSED_STREAM);
                }
            }
            Cmd::RefusePartial => {
                let partial: Vec<u32> = self
                    .streams
                    .iter()
                    .filter(|(_, p)| p.act.is_some())
                    .map(|(&s, _)| s)
                    .collect();
                for stream in partial {
                    if let Some(p) = self.streams.remove(&stream) {
                        self.receipt(p.receipt, |r| r.processed = false);
                    }
                    self.reset(stream, REFUSED_STREAM);
                }
            }
            Cmd::OpenWindows => {
                self.plan.stall_bodies = false;
                let partial: Vec<u32> = self.streams.keys().copied().collect();
                for stream in partial {
                    self.out
                        .extend(frame(WINDOW_UPDATE, 0, stream, &(1u32 << 24).to_be_bytes()));
                }
            }
            Cmd::HeadersHeld => {
                for &stream in &self.held {
                    self.out
                        .extend(frame(HEADERS, END_HEADERS, stream, &status_200()));
                }
            }
            Cmd::Close => self.close = Some(Close::Graceful),
            Cmd::Abort => self.close = Some(Close::Abort),
            Cmd::Batch(cmds) => {
                for cmd in cmds {
                    self.command(cmd);
                }
            }
        }
        self.sync();
    }

    /// Answer the delayed streams that are due; close after a GOAWAY once its kept streams
    /// are done (when planned).
    fn tick(&mut self) {
        let now = Instant::now();
        let due: Vec<u32> = self
            .delayed
            .iter()
            .filter(|d| d.0 <= now)
            .map(|d| d.1)
            .collect();
        self.delayed.retain(|d| d.0 > now);
        for stream in due {
            self.answer(stream);
        }
        if let (Some(grace), Some(at)) = (self.plan.close_after_goaway, self.goaway_at)
            && now >= at + grace
            && self.held.is_empty()
            && self.delayed.is_empty()
            && self.streams.values().all(|p| p.act.is_none())
            && self.close.is_none()
        {
            self.close = Some(Close::Graceful);
        }
        self.sync();
    }

    fn next_timer(&self) -> Option<Instant> {
        let mut t = self.delayed.iter().map(|d| d.0).min();
        if let (Some(grace), Some(at)) = (self.plan.close_after_goaway, self.goaway_at)
            && Instant::now() < at + grace
        {
            t = Some(t.map_or(at + grace, |t| t.min(at + grace)));
        }
        t
    }

    /// Write every queued record (each its own TLS record), then `out`, then a split GOAWAY's
    /// tail after its pause. False when the socket failed.
    async fn write(&mut self, tls: &mut rustls::ServerConnection, tcp: &mut TcpStream) -> bool {
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            self.records.push_back(out);
        }
        while let Some(record) = self.records.pop_front() {
            if !write_tls(tls, tcp, &record).await {
                return false;
            }
        }
        if let Some((pause, rest)) = self.tail.take() {
            sleep(pause).await;
            if !write_tls(tls, tcp, &rest).await {
                return false;
            }
        }
        flush_tls(tls, tcp).await
    }
}

/// `plain` as one TLS record when it fits (16 KiB), flushed to the socket; larger ones in 16 KiB
/// pieces (rustls buffers at most 64 KiB before a flush).
async fn write_tls(tls: &mut rustls::ServerConnection, tcp: &mut TcpStream, plain: &[u8]) -> bool {
    for piece in plain.chunks(16_384) {
        if tls.writer().write_all(piece).is_err() || !flush_tls(tls, tcp).await {
            return false;
        }
    }
    true
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

async fn serve(
    mut tcp: TcpStream,
    index: usize,
    config: Arc<rustls::ServerConfig>,
    plan: Plan,
    max_streams: u32,
    stats: Arc<Stats>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
) {
    let _ = tcp.set_nodelay(true);
    let Ok(mut tls) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut conn = H2Conn::new(index, plan, stats.clone());
    let mut guard: Option<OpenGuard> = None;
    let mut buf = vec![0u8; 32 * 1024];
    let mut chunk = vec![0u8; 32 * 1024];
    loop {
        let written = if guard.is_some() {
            conn.write(&mut tls, &mut tcp).await
        } else {
            flush_tls(&mut tls, &mut tcp).await
        };
        if !written || conn.close.is_some() {
            break;
        }
        let timer = conn.next_timer();
        tokio::select! {
            read = tcp.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => {
                        conn.close = Some(Close::Peer);
                        break;
                    }
                    Ok(n) => n,
                };
                let mut data = &buf[..n];
                let mut failed = false;
                while !data.is_empty() && !failed && conn.close.is_none() {
                    if tls.read_tls(&mut data).is_err() || tls.process_new_packets().is_err() {
                        failed = true;
                    }
                    loop {
                        match tls.reader().read(&mut chunk) {
                            Ok(0) => {
                                conn.close = Some(Close::Peer);
                                break;
                            }
                            Ok(n) => conn.plain.extend_from_slice(&chunk[..n]),
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(_) => {
                                conn.close = Some(Close::Peer);
                                break;
                            }
                        }
                    }
                }
                if failed {
                    let _ = flush_tls(&mut tls, &mut tcp).await;
                    break;
                }
                if guard.is_none() && !tls.is_handshaking() {
                    stats.tls.fetch_add(1, Ordering::SeqCst);
                    stats.open.fetch_add(1, Ordering::SeqCst);
                    guard = Some(OpenGuard(stats.clone()));
                    conn.on_open(max_streams);
                }
                if conn.plan.http1 {
                    conn.parse_http1();
                } else {
                    conn.parse();
                }
                conn.tick();
            }
            Some(cmd) = cmds.recv() => {
                conn.command(cmd);
                conn.tick();
            }
            () = sleep_until(timer.unwrap_or_else(Instant::now)), if timer.is_some() => conn.tick(),
        }
    }
    if conn.close == Some(Close::Graceful) && guard.is_some() {
        // close_notify and FIN, then read until the client closes (so no RST can wipe what the
        // client has not read yet).
        tls.send_close_notify();
        let _ = flush_tls(&mut tls, &mut tcp).await;
        let _ = tcp.shutdown().await;
        let _ = timeout(Duration::from_secs(2), async {
            while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
        })
        .await;
    }
    conn.open.clear();
    conn.held.clear();
    conn.sync();
}

fn pool_for(server: &Server, max_streams: Option<usize>) -> Arc<SessionPool> {
    Arc::new(
        SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig()))
            .knobs_from(|_| None)
            .max_streams_per_session(max_streams)
            .build(),
    )
}

/// With `max_streams_per_session(Some(n))`: make the session move to a fresh connection that
/// holds every stream, then start n + 1 calls: exactly n reach the server at once (fewer: a slot
/// leaked; more: the bound is gone), all on that one connection; then answer them all.
async fn assert_exact_bound(server: &Server, pool: &Arc<SessionPool>, n: usize, what: &str) {
    server.set_default(Plan::acts(Act::Hold));
    let newest = server.connections();
    server.send(
        newest,
        Cmd::Batch(vec![
            Cmd::GoAway {
                last: Last::Max,
                code: NO_ERROR,
            },
            Cmd::GoAway {
                last: Last::Highest,
                code: NO_ERROR,
            },
        ]),
    );
    sleep(ms(50)).await;
    let before = server.connections();
    let held_before = server.total_held();
    let tasks = spawn_creates(pool, "bound", n + 1);
    let target = held_before + n as u64;
    let reached = wait_until(CALL_BOUND, || server.total_held() >= target).await;
    sleep(ms(100)).await;
    let held = server.total_held() - held_before;
    let opened = server.connections() - before;
    let on_new = server.conn(before + 1);
    let summary = server.summary();
    for _ in 0..200 {
        if finished(&tasks) == tasks.len() {
            break;
        }
        for c in before + 1..=server.connections() {
            server.send(c, Cmd::AnswerHeld);
        }
        sleep(ms(10)).await;
    }
    let outcomes = join(tasks).await;
    assert!(
        reached && held == n as u64,
        "{what}: with max_streams_per_session(Some({n})) and {} calls, {held} reached the server \
         at once (expected exactly {n}: fewer means a slot leaked, more that the bound is gone); \
         {summary}",
        n + 1
    );
    assert_eq!(
        (opened, on_new.held),
        (1, n as u64),
        "{what}: the {n} streams should all be on the one new connection; {summary}"
    );
    assert!(
        first_error(&outcomes).is_none(),
        "{what}: {:?}; {}",
        first_error(&outcomes),
        server.summary()
    );
    assert_no_violations(server, &outcomes, true, what);
}

// ---------------------------------------------------------------------------------------------
// 1. A request the server processed is never sent twice.

enum Step {
    Cmd(Cmd),
    Wait(u64),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    Fail,
    Succeed,
    Either,
}

/// A fresh server whose first connection follows `plan`; `calls` POSTs are sent; once the
/// server has every body, `steps` run against connection 1. Every call must end within its
/// bound as `expect` says, its request received exactly once (processed), even 100 ms later; a
/// later call must succeed. Returns the problems found.
async fn processed_case(
    what: &'static str,
    plan: Plan,
    steps: Vec<Step>,
    expect: Expect,
    calls: usize,
) -> Vec<String> {
    let server = Server::start(100, Plan::acts(Act::Answer)).await;
    server.plan([plan]);
    let pool = pool_for(&server, None);
    let tasks = spawn_creates(&pool, "processed", calls);
    let mut problems = Vec::new();
    if !wait_until(CALL_BOUND, || server.named() >= calls).await {
        problems.push(format!("{what}: not received: {}", server.summary()));
    }
    for step in steps {
        match step {
            Step::Cmd(cmd) => server.send(1, cmd),
            Step::Wait(n) => sleep(ms(n)).await,
        }
    }
    let outcomes = join(tasks).await;
    sleep(ms(100)).await;
    for (name, result) in &outcomes {
        let receipts = server.receipts_of(name);
        if receipts.len() != 1 || !receipts[0].processed {
            problems.push(format!(
                "{what}: {name} → {result:?}, received {}x: {}",
                receipts.len(),
                describe(&receipts)
            ));
        }
        let wrong = match expect {
            Expect::Fail => result.is_ok(),
            Expect::Succeed => result.is_err(),
            Expect::Either => is_hung(result),
        };
        if wrong || is_hung(result) {
            problems.push(format!("{what}: {name} → {result:?}, expected {expect:?}"));
        }
    }
    let later = fresh_name("after");
    if let Err(e) = bounded_create(&pool, &later).await {
        problems.push(format!(
            "{what}: a later call failed: {e}; {}",
            server.summary()
        ));
    }
    problems
}

fn goaway(last: Last, code: u32) -> Cmd {
    Cmd::GoAway { last, code }
}

// Requests the server received — and so may have processed — before the connection died or the
// stream was reset: held under a GOAWAY that keeps them (last stream id = the highest, with
// NO_ERROR, INTERNAL_ERROR or ENHANCE_YOUR_CALM; or 2^31−1) then the socket dropped or closed;
// the socket dropped or closed with no GOAWAY; the stream reset with INTERNAL_ERROR, CANCEL or
// NO_ERROR; the socket dropped right after the request was read. Not one may be sent again
// (RFC 9113 §8.7: only REFUSED_STREAM and streams above a GOAWAY's last id are safe to retry);
// the calls fail (or, where the server answers after an error GOAWAY, may succeed), within the
// bound, and the session works afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processed_requests_are_never_sent_twice() {
    let hold = || Plan::acts(Act::Hold);
    let cases = vec![
        processed_case(
            "GOAWAY(highest, INTERNAL_ERROR) + drop in one record",
            hold(),
            vec![Step::Cmd(Cmd::Batch(vec![
                goaway(Last::Highest, INTERNAL_ERROR),
                Cmd::Abort,
            ]))],
            Expect::Fail,
            3,
        ),
        processed_case(
            "GOAWAY(highest, NO_ERROR), then close without answers",
            hold(),
            vec![
                Step::Cmd(goaway(Last::Highest, NO_ERROR)),
                Step::Wait(30),
                Step::Cmd(Cmd::Close),
            ],
            Expect::Fail,
            3,
        ),
        processed_case(
            "GOAWAY(2^31-1, NO_ERROR), then drop",
            hold(),
            vec![
                Step::Cmd(goaway(Last::Max, NO_ERROR)),
                Step::Wait(30),
                Step::Cmd(Cmd::Abort),
            ],
            Expect::Fail,
            3,
        ),
        processed_case(
            "GOAWAY(highest, ENHANCE_YOUR_CALM), then close",
            hold(),
            vec![
                Step::Cmd(goaway(Last::Highest, ENHANCE_YOUR_CALM)),
                Step::Wait(30),
                Step::Cmd(Cmd::Close),
            ],
            Expect::Fail,
            3,
        ),
        processed_case(
            "drop, no GOAWAY",
            hold(),
            vec![Step::Cmd(Cmd::Abort)],
            Expect::Fail,
            3,
        ),
        processed_case(
            "close (close_notify, FIN), no GOAWAY",
            hold(),
            vec![Step::Cmd(Cmd::Close)],
            Expect::Fail,
            3,
        ),
        processed_case(
            "RST_STREAM(INTERNAL_ERROR)",
            Plan::script([Act::Reset(INTERNAL_ERROR); 3], Act::Answer),
            vec![],
            Expect::Fail,
            3,
        ),
        processed_case(
            "RST_STREAM(CANCEL)",
            Plan::script([Act::Reset(CANCEL); 3], Act::Answer),
            vec![],
            Expect::Fail,
            3,
        ),
        processed_case(
            "RST_STREAM(NO_ERROR) before any response",
            Plan::script([Act::Reset(NO_ERROR); 3], Act::Answer),
            vec![],
            Expect::Fail,
            3,
        ),
        processed_case(
            "socket dropped right after the request was read",
            Plan::script([Act::Abort], Act::Answer),
            vec![],
            Expect::Fail,
            1,
        ),
        processed_case(
            "GOAWAY(highest, INTERNAL_ERROR), socket left open, answered 100 ms later",
            hold(),
            vec![
                Step::Cmd(goaway(Last::Highest, INTERNAL_ERROR)),
                Step::Wait(100),
                Step::Cmd(Cmd::AnswerHeld),
            ],
            Expect::Either,
            3,
        ),
        processed_case(
            "GOAWAY(highest, NO_ERROR), answered 50 ms later",
            hold(),
            vec![
                Step::Cmd(goaway(Last::Highest, NO_ERROR)),
                Step::Wait(50),
                Step::Cmd(Cmd::AnswerHeld),
            ],
            Expect::Succeed,
            3,
        ),
    ];
    let problems: Vec<String> = join_all(cases).await.into_iter().flatten().collect();
    assert!(problems.is_empty(), "{problems:#?}");
}

// Ten POSTs held on connection 1; GOAWAY (NO_ERROR) keeping the first four; once the six above
// its last id are done, the socket is dropped. The six were never processed: each is received
// twice (once unprocessed on connection 1, once on connection 2) and succeeds. The four were
// processed: each fails with the connection and is received once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_keeping_four_of_ten_then_the_socket_drops() {
    let server = Server::start(100, Plan::acts(Act::Answer)).await;
    server.plan([Plan::acts(Act::Hold)]);
    let pool = pool_for(&server, None);
    let tasks = spawn_creates(&pool, "keep4", 10);
    assert!(
        wait_until(CALL_BOUND, || server.conn(1).held == 10).await,
        "{}",
        server.summary()
    );
    server.send(1, goaway(Last::Nth(4), NO_ERROR));
    let six_done = wait_until(CALL_BOUND, || finished(&tasks) >= 6).await;
    server.send(1, Cmd::Abort);
    let outcomes = join(tasks).await;
    assert!(six_done, "the six refused calls did not end: {outcomes:?}");
    let by_name = server.by_name();
    let (mut kept, mut resent) = (0, 0);
    for (name, result) in &outcomes {
        let receipts = &by_name[name];
        if receipts[0].processed {
            kept += 1;
            assert!(
                receipts.len() == 1 && result.is_err(),
                "a stream the GOAWAY kept (processed): {name} → {result:?}, received {}",
                describe(receipts)
            );
        } else {
            resent += 1;
            assert!(
                receipts.len() == 2 && receipts[1].processed && receipts[1].conn == 1,
                "a stream above the GOAWAY's last id: {name} → {result:?}, received {}",
                describe(receipts)
            );
            assert!(result.is_ok(), "{name} → {result:?}; {}", server.summary());
        }
    }
    assert_eq!((kept, resent), (4, 6), "{}", server.summary());
    assert_eq!(server.tls(), 2, "{}", server.summary());
}

// ---------------------------------------------------------------------------------------------
// 2. REFUSED_STREAM and GOAWAY share one budget of 3 resends.

// One POST per scenario, the connections scripted stream by stream. "Refuse": RST_STREAM
// (REFUSED_STREAM); "below": a GOAWAY whose last stream id is below the stream. Each is a send
// the server did not process; the call gets 4 sends in all (3 resends), over as many connections
// as the GOAWAYs force, and no more — then it fails; a send the server answers ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_goaway_share_three_resends() {
    use Act::{GoAwayBelow as Below, Refuse};
    let s = |acts: &[Act]| Plan::script(acts.to_vec(), Act::Answer);
    let scenarios: Vec<(&str, Vec<Plan>, bool, usize, u64)> = vec![
        ("below | answer", vec![s(&[Below])], true, 2, 2),
        (
            "refuse, refuse, refuse, answer",
            vec![s(&[Refuse, Refuse, Refuse])],
            true,
            4,
            1,
        ),
        (
            "refuse, below | refuse, answer",
            vec![s(&[Refuse, Below]), s(&[Refuse])],
            true,
            4,
            2,
        ),
        (
            "below | refuse, refuse, answer",
            vec![s(&[Below]), s(&[Refuse, Refuse])],
            true,
            4,
            2,
        ),
        (
            "below | below | below | answer",
            vec![s(&[Below]); 3],
            true,
            4,
            4,
        ),
        (
            "refuse, below | refuse, refuse (, answer)",
            vec![s(&[Refuse, Below]), s(&[Refuse, Refuse])],
            false,
            4,
            2,
        ),
        (
            "below | refuse, refuse, refuse (, answer)",
            vec![s(&[Below]), s(&[Refuse, Refuse, Refuse])],
            false,
            4,
            2,
        ),
        (
            "below | below | below | below (| answer)",
            vec![s(&[Below]); 4],
            false,
            4,
            4,
        ),
    ];
    let mut problems = Vec::new();
    for (what, plans, ok, sends, conns) in scenarios {
        let server = Server::start(100, Plan::acts(Act::Answer)).await;
        server.plan(plans);
        let pool = pool_for(&server, None);
        let name = fresh_name("budget");
        let started = Instant::now();
        let result = bounded_create(&pool, &name).await;
        let took = started.elapsed();
        sleep(ms(50)).await;
        let receipts = server.receipts_of(&name);
        let got = (result.is_ok(), receipts.len(), server.connections() as u64);
        if got != (ok, sends, conns) || took > Duration::from_secs(1) {
            problems.push(format!(
                "{what}: expected (ok {ok}, {sends} sends, {conns} connections), got {got:?} \
                 in {took:?}: {result:?}; received {}",
                describe(&receipts)
            ));
        }
        if let Err(e) = bounded_create(&pool, &fresh_name("after")).await {
            problems.push(format!("{what}: a later call failed: {e}"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

// A stream kept by a GOAWAY (below its last stream id) that the server then refuses with
// REFUSED_STREAM was not processed (RFC 9113 §8.7), but its connection takes no new stream: the
// request goes out on the next connection and succeeds, processed once. Also with the refusal
// and the GOAWAY in one TLS record, in both orders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_stream_on_a_draining_connection_is_sent_on_the_next() {
    let variants: Vec<(&str, Vec<Step>)> = vec![
        (
            "GOAWAY(highest), 30 ms, REFUSED_STREAM",
            vec![
                Step::Cmd(goaway(Last::Highest, NO_ERROR)),
                Step::Wait(30),
                Step::Cmd(Cmd::RefuseHeld),
            ],
        ),
        (
            "GOAWAY(highest) + REFUSED_STREAM in one record",
            vec![Step::Cmd(Cmd::Batch(vec![
                goaway(Last::Highest, NO_ERROR),
                Cmd::RefuseHeld,
            ]))],
        ),
        (
            "REFUSED_STREAM + GOAWAY(highest) in one record",
            vec![Step::Cmd(Cmd::Batch(vec![
                Cmd::RefuseHeld,
                goaway(Last::Highest, NO_ERROR),
            ]))],
        ),
    ];
    let mut problems = Vec::new();
    for (what, steps) in variants {
        let server = Server::start(100, Plan::acts(Act::Answer)).await;
        server.plan([Plan::acts(Act::Hold)]);
        let pool = pool_for(&server, None);
        let tasks = spawn_creates(&pool, "draining-refused", 2);
        assert!(
            wait_until(CALL_BOUND, || server.conn(1).held == 2).await,
            "{what}: {}",
            server.summary()
        );
        for step in steps {
            match step {
                Step::Cmd(cmd) => server.send(1, cmd),
                Step::Wait(n) => sleep(ms(n)).await,
            }
        }
        let outcomes = join(tasks).await;
        for f in violations(&server, &outcomes, true) {
            problems.push(format!("{what}: {f}"));
        }
        if let Some(e) = first_error(&outcomes) {
            problems.push(format!("{what}: {e:?}; {}", server.summary()));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

const BIG: usize = 100_000;

/// A POST whose body (about 100 KB) is larger than a stream's initial flow-control window: the
/// server echoes it, and the answer must carry the whole body back.
async fn create_big(pool: &SessionPool, name: &str) -> Result<(), String> {
    let session = pool
        .session(&key())
        .await
        .map_err(|e| format!("session: {e:?}"))?;
    let mut cm = config_map(name);
    cm.data
        .get_or_insert_with(BTreeMap::new)
        .insert("blob".to_owned(), "x".repeat(BIG));
    let created = timeout(
        CALL_BOUND,
        Api::<ConfigMap>::namespaced(session.client().clone(), NS)
            .create(&PostParams::default(), &cm),
    )
    .await
    .map_err(|_| "HUNG".to_owned())?
    .map_err(|e| format!("{e:?}"))?;
    let blob = created
        .data
        .as_ref()
        .and_then(|d| d.get("blob"))
        .map(String::len);
    if created.metadata.name.as_deref() == Some(name) && blob == Some(BIG) {
        Ok(())
    } else {
        Err(format!("answer with a cut body: blob {blob:?}"))
    }
}

// A POST whose 100 KB body is stalled half-sent by flow control (the server opens no stream
// window beyond the first 64 KiB) when the server (a) sends GOAWAY with last stream id 0 (not
// processed), (b) refuses the stream with REFUSED_STREAM and opens the windows (not processed),
// or (c) sends GOAWAY keeping it, then drops the socket (processed). (a) is sent again on
// connection 2 and (b) on connection 1, each time with its WHOLE body (the server echoes it), and
// succeeds; (c) fails and is never sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_bodies_are_resent_whole_or_not_at_all() {
    let stalling = || Plan {
        stall_bodies: true,
        ..Plan::acts(Act::Answer)
    };
    let cases: Vec<(&str, Cmd, bool, u64, u64)> = vec![
        ("GOAWAY(0)", goaway(Last::Nth(0), NO_ERROR), true, 1, 1),
        (
            "REFUSED_STREAM",
            Cmd::Batch(vec![Cmd::RefusePartial, Cmd::OpenWindows]),
            true,
            2,
            0,
        ),
        (
            "GOAWAY(highest) then drop",
            Cmd::Batch(vec![goaway(Last::Highest, NO_ERROR), Cmd::Abort]),
            false,
            1,
            0,
        ),
    ];
    for (what, cmd, ok, on_first, on_second) in cases {
        let server = Server::start(100, Plan::acts(Act::Answer)).await;
        server.plan([stalling()]);
        let pool = pool_for(&server, None);
        let name = fresh_name("big");
        let call = {
            let (pool, name) = (pool.clone(), name.clone());
            tokio::spawn(async move { create_big(&pool, &name).await })
        };
        assert!(
            wait_until(CALL_BOUND, || server.conn(1).streams == 1).await,
            "{what}: {}",
            server.summary()
        );
        sleep(ms(100)).await;
        assert!(!call.is_finished(), "{what}: the body did not stall");
        server.send(1, cmd);
        let result = call.await.unwrap();
        sleep(ms(50)).await;
        let (first, second) = (server.conn(1).streams, server.conn(2).streams);
        assert_eq!(
            (result.is_ok(), first, second),
            (ok, on_first, on_second),
            "{what}: {result:?}; requests {:?}; {}",
            server.receipts(),
            server.summary()
        );
        if ok {
            let receipts = server.receipts_of(&name);
            assert!(
                receipts.len() == 1 && receipts[0].processed,
                "{what}: {}",
                describe(&receipts)
            );
        }
    }
}

// Two POSTs held; the server sends their response HEADERS (the callers have their responses),
// then GOAWAY with last stream id 0 and closes. A request whose response has begun is never sent
// again (the guide: the session keeps a copy "until its response headers arrive"): both fail
// reading the body, each received once, nothing on a second connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_begun_then_goaway_below_is_not_resent() {
    let server = Server::start(100, Plan::acts(Act::Answer)).await;
    server.plan([Plan::acts(Act::Hold)]);
    let pool = pool_for(&server, None);
    let tasks = spawn_creates(&pool, "begun", 2);
    assert!(
        wait_until(CALL_BOUND, || server.conn(1).held == 2).await,
        "{}",
        server.summary()
    );
    server.send(1, Cmd::HeadersHeld);
    sleep(ms(30)).await;
    server.send(1, goaway(Last::Nth(0), NO_ERROR));
    sleep(ms(30)).await;
    server.send(1, Cmd::Close);
    let outcomes = join(tasks).await;
    sleep(ms(50)).await;
    for (name, result) in &outcomes {
        let receipts = server.receipts_of(name);
        assert!(
            result.is_err() && receipts.len() == 1,
            "{name} → {result:?}; received {}; {}",
            describe(&receipts),
            server.summary()
        );
        assert!(!is_hung(result), "{name} → {result:?}");
    }
    assert_eq!(server.conn(2).streams, 0, "{}", server.summary());
}

// Ten POSTs held on connection 1, then GOAWAYs lowering the last stream id step by step (2^31−1,
// the 8th stream, the 5th, the 2nd), each once the calls the previous one refused are done: each
// GOAWAY sends the streams it newly refuses to connection 2 (answered there); the two kept get
// their answers on connection 1. All ten succeed, each processed once, two connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successive_goaways_lowering_the_last_stream_id() {
    let server = Server::start(100, Plan::acts(Act::Answer)).await;
    server.plan([Plan::acts(Act::Hold)]);
    let pool = pool_for(&server, None);
    let tasks = spawn_creates(&pool, "lower", 10);
    assert!(
        wait_until(CALL_BOUND, || server.conn(1).held == 10).await,
        "{}",
        server.summary()
    );
    server.send(1, goaway(Last::Max, NO_ERROR));
    sleep(ms(20)).await;
    assert_eq!(finished(&tasks), 0, "{}", server.summary());
    for (nth, done) in [(8, 2), (5, 5), (2, 8)] {
        server.send(1, goaway(Last::Nth(nth), NO_ERROR));
        assert!(
            wait_until(CALL_BOUND, || finished(&tasks) >= done).await,
            "GOAWAY keeping {nth}: {} calls done; {}",
            finished(&tasks),
            server.summary()
        );
        sleep(ms(20)).await;
        assert_eq!(finished(&tasks), done, "{}", server.summary());
    }
    server.send(1, Cmd::AnswerHeld);
    let outcomes = join(tasks).await;
    assert!(
        first_error(&outcomes).is_none(),
        "{:?}; {}",
        first_error(&outcomes),
        server.summary()
    );
    assert_no_violations(&server, &outcomes, true, "successive GOAWAYs");
    assert_eq!(
        (
            server.conn(1).streams,
            server.conn(2).streams,
            server.connections()
        ),
        (10, 8, 2),
        "{}",
        server.summary()
    );
}

/// Six POSTs held on connection 1; GOAWAY keeping the first two; the next connections answer in
/// HTTP/1.1 only (ALPN http/1.1); three calls are made once the four refused are done. Returns
/// (the outcomes, the pool's connection stats, the server).
async fn goaway_then_http1(
    burn: bool,
) -> (Vec<Outcome>, k8s_session::ConnectionStats, Server, bool) {
    let http1 = Plan {
        http1: true,
        ..Plan::acts(Act::Answer)
    };
    let server = Server::start(100, http1).await;
    server.plan([Plan::acts(Act::Hold)]);
    let pool = pool_for(&server, None);
    let mut tasks = spawn_creates(&pool, "fallback", 6);
    assert!(
        wait_until(CALL_BOUND, || server.conn(1).held == 6).await,
        "{}",
        server.summary()
    );
    let burner = burn.then(|| {
        tokio::task::spawn_blocking(|| {
            let end = std::time::Instant::now() + Duration::from_millis(200);
            let mut x = 1u64;
            while std::time::Instant::now() < end {
                x = std::hint::black_box(xorshift(&mut x));
            }
        })
    });
    server.send(1, goaway(Last::Nth(2), NO_ERROR));
    let refused_done = wait_until(CALL_BOUND, || finished(&tasks) >= 4).await;
    tasks.extend(spawn_creates(&pool, "fallback-later", 3));
    let later_done = wait_until(CALL_BOUND, || finished(&tasks) >= 7).await;
    server.send(1, Cmd::AnswerHeld);
    let outcomes = join(tasks).await;
    if let Some(b) = burner {
        b.await.unwrap();
    }
    (
        outcomes,
        pool.connection_stats(),
        server,
        refused_done && later_done,
    )
}

// Six POSTs held on connection 1; GOAWAY keeping the first two; the next connections answer in
// HTTP/1.1 only. The four refused go out over HTTP/1.1 (the guide: a reconnect answered with
// HTTP/1.1 takes the requests waiting on it, unsent, to the HTTP/1.1 client) without waiting for
// the two kept, and succeed, as do three calls made after; the two kept get their answers on
// connection 1. Each processed once; the fallback counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_refused_streams_go_out_over_an_http1_fallback() {
    let (outcomes, stats, server, prompt) = goaway_then_http1(false).await;
    assert!(
        prompt,
        "calls waited for connection 1's kept streams; {}",
        server.summary()
    );
    assert!(
        first_error(&outcomes).is_none(),
        "{:?}; {}",
        first_error(&outcomes),
        server.summary()
    );
    assert_no_violations(&server, &outcomes, true, "GOAWAY then an HTTP/1.1 fallback");
    assert!(
        stats.http2_connections == 1 && stats.http1_fallbacks >= 1,
        "{stats:?}; {}",
        server.summary()
    );
}

// The same scenario, thirty rounds, a blocking thread burning CPU for 200 ms around each GOAWAY:
// one GOAWAY, one reconnect, so ONE probe answered with HTTP/1.1 (the guide: after a reconnect
// answered with HTTP/1.1 "so do the session's later calls" go over HTTP/1.1; K9: one probe per
// burst) — `http1_fallbacks` must be 1 every round.
//
// FOUND: now and then the session probes HTTP/2 twice after the GOAWAY and counts 2 fallbacks
// (`ConnectionStats { http2_connections: 1, http1_connections: 4, http1_fallbacks: 2 }`; 3 of
// about 30 full-file runs under CPU load). Every call still succeeds, each processed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_then_http1_fallback_probes_once() {
    let mut bad = Vec::new();
    for round in 1..=30 {
        let (outcomes, stats, server, _) = goaway_then_http1(true).await;
        if stats.http1_fallbacks != 1 || first_error(&outcomes).is_some() {
            bad.push(format!(
                "round {round}: {stats:?}, {:?}; {}",
                first_error(&outcomes),
                server.summary()
            ));
        }
    }
    assert!(bad.is_empty(), "{} of 30 rounds: {bad:#?}", bad.len());
}

// Two sessions (clusters "goaway" and "other") to the same server, each on its own connection.
// A graceful GOAWAY on session A's connection, with two of its calls held there: A's next calls
// go out on a new connection; session B's calls stay on B's connection (no new one for B); A's
// held calls get their answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_on_one_session_leaves_other_sessions_alone() {
    let server = Server::start(100, Plan::acts(Act::Answer)).await;
    server.plan([Plan::script([Act::Answer], Act::Hold)]);
    let pool = pool_for(&server, None);
    let other = SessionKey::new("sub", "rg", "other");
    let call_other = |name: String| {
        let pool = pool.clone();
        let other = other.clone();
        async move {
            let session = pool.session(&other).await.map_err(|e| format!("{e:?}"))?;
            timeout(
                CALL_BOUND,
                Api::<ConfigMap>::namespaced(session.client().clone(), NS)
                    .create(&PostParams::default(), &config_map(&name)),
            )
            .await
            .map_err(|_| "HUNG".to_owned())?
            .map(|_| ())
            .map_err(|e| format!("{e:?}"))
        }
    };
    assert_eq!(bounded_create(&pool, &fresh_name("a")).await, Ok(()));
    assert_eq!(call_other(fresh_name("b")).await, Ok(()));
    assert_eq!(server.connections(), 2, "{}", server.summary());
    let held = spawn_creates(&pool, "a-held", 2);
    assert!(
        wait_until(CALL_BOUND, || server.conn(1).held == 2).await,
        "{}",
        server.summary()
    );
    server.send(
        1,
        Cmd::Batch(vec![
            goaway(Last::Max, NO_ERROR),
            goaway(Last::Highest, NO_ERROR),
        ]),
    );
    sleep(ms(20)).await;
    for _ in 0..3 {
        assert_eq!(bounded_create(&pool, &fresh_name("a")).await, Ok(()));
        assert_eq!(call_other(fresh_name("b")).await, Ok(()));
    }
    server.send(1, Cmd::AnswerHeld);
    let outcomes = join(held).await;
    assert!(first_error(&outcomes).is_none(), "{outcomes:?}");
    assert_eq!(
        (
            server.connections(),
            server.conn(2).streams,
            server.conn(3).streams
        ),
        (3, 4, 3),
        "{}",
        server.summary()
    );
}

// The server's stream limit is 100: 100 calls held on connection 1 and 100 more waiting beyond
// the limit when a graceful GOAWAY (2^31−1, then the highest) arrives. The 100 waiting go out on
// connection 2 at once and succeed within 2 s, while the 100 held still wait; then these get
// their answers. 200 successes, each processed once, two connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_with_a_hundred_held_and_a_hundred_waiting() {
    let server = Server::start(100, Plan::acts(Act::Answer)).await;
    server.plan([Plan::script([Act::Answer], Act::Hold)]);
    let pool = pool_for(&server, None);
    assert_eq!(bounded_create(&pool, &fresh_name("warm")).await, Ok(()));
    let tasks = spawn_creates(&pool, "hundred", 200);
    assert!(
        wait_until(CALL_BOUND, || server.conn(1).held == 100).await,
        "{}",
        server.summary()
    );
    sleep(ms(50)).await;
    let goaway_at = Instant::now();
    server.send(
        1,
        Cmd::Batch(vec![
            goaway(Last::Max, NO_ERROR),
            goaway(Last::Highest, NO_ERROR),
        ]),
    );
    let waiting_done = wait_until(Duration::from_secs(2), || finished(&tasks) >= 100).await;
    let took = goaway_at.elapsed();
    let still_held = server.conn(1).held;
    server.send(1, Cmd::AnswerHeld);
    let outcomes = join(tasks).await;
    assert!(
        waiting_done && still_held == 100,
        "the 100 waiting calls: done {waiting_done} after {took:?}, {still_held} still held; {}",
        server.summary()
    );
    assert!(
        first_error(&outcomes).is_none(),
        "{:?}; {}",
        first_error(&outcomes),
        server.summary()
    );
    assert_no_violations(&server, &outcomes, true, "100 held, 100 waiting");
    assert_eq!(
        (
            server.conn(1).streams,
            server.conn(2).streams,
            server.connections()
        ),
        (101, 100, 2),
        "{}",
        server.summary()
    );
}

// ---------------------------------------------------------------------------------------------
// 3. How the GOAWAY reaches the client: in the same TLS record as responses, split across
//    records, with a long debug payload; and bytes that look like a GOAWAY inside other frames.

// Four POSTs held on connection 1; in ONE TLS record: the answers of the first two and a GOAWAY
// keeping them (in either order), or GOAWAY(2^31−1), the answers, GOAWAY(the second stream).
// Three POSTs made right after. All seven succeed, each processed once: the two answered on
// connection 1, the two refused and the three later ones on connection 2; two connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_in_the_same_record_as_responses() {
    type MakeCmd = fn() -> Cmd;
    let variants: Vec<(&str, MakeCmd)> = vec![
        ("answers, then GOAWAY", || {
            Cmd::Batch(vec![Cmd::AnswerFirst(2), goaway(Last::Nth(2), NO_ERROR)])
        }),
        ("GOAWAY, then answers", || {
            Cmd::Batch(vec![goaway(Last::Nth(2), NO_ERROR), Cmd::AnswerFirst(2)])
        }),
        ("GOAWAY(max), answers, GOAWAY", || {
            Cmd::Batch(vec![
                goaway(Last::Max, NO_ERROR),
                Cmd::AnswerFirst(2),
                goaway(Last::Nth(2), NO_ERROR),
            ])
        }),
    ];
    for (what, cmd) in variants {
        let server = Server::start(100, Plan::acts(Act::Answer)).await;
        server.plan([Plan::acts(Act::Hold)]);
        let pool = pool_for(&server, None);
        let mut tasks = spawn_creates(&pool, "record", 4);
        assert!(
            wait_until(CALL_BOUND, || server.conn(1).held == 4).await,
            "{what}: {}",
            server.summary()
        );
        server.send(1, cmd());
        // The later calls start once the client has read that record: the two answered calls
        // (their answers came with the GOAWAY) have ended. (A fixed 5 ms was too short under
        // load: the later calls then went out on connection 1 before the GOAWAY reached the
        // client, and were refused and resent; seen once in 45 loaded runs.)
        assert!(
            wait_until(CALL_BOUND, || tasks
                .iter()
                .filter(|t| t.is_finished())
                .count()
                >= 2)
            .await,
            "{what}: the two answered calls did not end; {}",
            server.summary()
        );
        tasks.extend(spawn_creates(&pool, "record-later", 3));
        let outcomes = join(tasks).await;
        assert!(
            first_error(&outcomes).is_none(),
            "{what}: {:?}; {}",
            first_error(&outcomes),
            server.summary()
        );
        assert_no_violations(&server, &outcomes, true, what);
        assert_eq!(server.tls(), 2, "{what}: {}", server.summary());
        assert_eq!(
            server.conn(1).streams,
            4,
            "{what}: a stream went out on connection 1 after its GOAWAY; {}",
            server.summary()
        );
    }
}

// Three POSTs held on connection 1; a GOAWAY keeping the first is written as two TLS records,
// split after `at` bytes (inside the frame header, the last stream id, the error code, the debug
// data), 30 ms apart, the server reading nothing in between; two POSTs are made during the pause
// (they go out on connection 1 and arrive above the last stream id: not processed). Also with
// 16 000 bytes of debug data (a frame larger than most reads). The two refused and the two made
// in the pause go out on connection 2 and succeed; the kept one gets its answer; each processed
// once; two connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_split_across_records_at_every_point() {
    let splits: &[(usize, usize)] = &[
        (1, 8),
        (3, 8),
        (5, 8),
        (8, 8),
        (9, 8),
        (11, 8),
        (13, 8),
        (16, 8),
        (17, 8),
        (20, 8),
        (4, 16_000),
        (9, 16_000),
        (4_000, 16_000),
        (16_016, 16_000),
    ];
    for &(at, debug) in splits {
        let what = format!("split at {at} of a GOAWAY with {debug} bytes of debug data");
        let server = Server::start(100, Plan::acts(Act::Answer)).await;
        server.plan([Plan::acts(Act::Hold)]);
        let pool = pool_for(&server, None);
        let mut tasks = spawn_creates(&pool, "split", 3);
        assert!(
            wait_until(CALL_BOUND, || server.conn(1).held == 3).await,
            "{what}: {}",
            server.summary()
        );
        server.send(
            1,
            Cmd::GoAwaySplit {
                last: Last::Nth(1),
                at,
                pause: ms(30),
                debug,
            },
        );
        sleep(ms(8)).await;
        tasks.extend(spawn_creates(&pool, "split-pause", 2));
        let refused_done = wait_until(CALL_BOUND, || finished(&tasks) >= 4).await;
        server.send(1, Cmd::AnswerHeld);
        let outcomes = join(tasks).await;
        assert!(
            refused_done,
            "{what}: the refused calls waited for the kept one; {}",
            server.summary()
        );
        assert!(
            first_error(&outcomes).is_none(),
            "{what}: {:?}; {}",
            first_error(&outcomes),
            server.summary()
        );
        assert_no_violations(&server, &outcomes, true, &what);
        assert_eq!(server.tls(), 2, "{what}: {}", server.summary());
    }
}

async fn get_text(pool: &SessionPool) -> Result<String, String> {
    let session = pool
        .session(&key())
        .await
        .map_err(|e| format!("session: {e:?}"))?;
    let request = http::Request::get(format!("/api/v1/namespaces/{NS}/pods"))
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    timeout(CALL_BOUND, session.client().request_text(request))
        .await
        .map_err(|_| "HUNG".to_owned())?
        .map_err(|e| format!("{e:?}"))
}

// The session reads the server's frame headers to see GOAWAY: bytes that look like a GOAWAY
// frame inside DATA payloads, inside padding-framed DATA, inside frames of unknown types and in
// a PING's payload, with every response cut into TLS records of 1 to 23 bytes, must not be taken
// for one. 40 sequential and 40 concurrent GETs: every body intact, ONE connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_like_bytes_inside_other_frames_are_not_a_goaway() {
    let server = Server::start(
        100,
        Plan {
            crafted: true,
            ..Plan::acts(Act::Answer)
        },
    )
    .await;
    let pool = pool_for(&server, None);
    let expected = String::from_utf8(crafted_body()).unwrap();
    for i in 0..40 {
        let body = get_text(&pool).await;
        assert_eq!(
            body.as_deref(),
            Ok(expected.as_str()),
            "call {i}; {}",
            server.summary()
        );
    }
    let bodies = join_all((0..40).map(|_| get_text(&pool))).await;
    for body in bodies {
        assert_eq!(
            body.as_deref(),
            Ok(expected.as_str()),
            "{}",
            server.summary()
        );
    }
    assert_eq!(
        server.tls(),
        1,
        "a GOAWAY-like byte sequence inside another frame let the connection go; {}",
        server.summary()
    );
    assert_eq!(pool.connection_stats().http2_connections, 1);
}

// ---------------------------------------------------------------------------------------------
// 4. GOAWAY right after the server's SETTINGS (during the client's HTTP/2 handshake).

/// One round: a fresh server whose first connection follows `first` (later ones answer), a cold
/// session, ten POSTs at once; with `warm`, the session first makes one call on a connection that
/// then holds four calls and receives GOAWAY(highest), and the ten POSTs follow (they go to
/// connection 2, which follows `first`). Returns the broken promises: every call the server never
/// processed must succeed on a later connection (the server answers everything it keeps), none
/// processed twice, none hung.
async fn handshake_round(first: Plan, warm: bool) -> Vec<String> {
    let server = Server::start(100, Plan::acts(Act::Answer)).await;
    let pool = pool_for(&server, None);
    let mut held = Vec::new();
    if warm {
        server.plan([Plan::script([Act::Answer], Act::Hold), first]);
        if let Err(e) = bounded_create(&pool, &fresh_name("hs-warm")).await {
            return vec![format!("warm-up failed: {e}")];
        }
        held = spawn_creates(&pool, "hs-held", 4);
        if !wait_until(CALL_BOUND, || server.conn(1).held == 4).await {
            return vec![format!("not held: {}", server.summary())];
        }
        server.send(1, goaway(Last::Highest, NO_ERROR));
        sleep(ms(20)).await;
    } else {
        server.plan([first]);
    }
    let mut outcomes = join(spawn_creates(&pool, "hs", 10)).await;
    server.send(1, Cmd::AnswerHeld);
    outcomes.extend(join(held).await);
    let mut found = violations(&server, &outcomes, true);
    if let Some(e) = first_error(&outcomes) {
        found.push(format!(
            "{} of {} calls failed, e.g. {e:?}; {}",
            outcomes.iter().filter(|(_, r)| r.is_err()).count(),
            outcomes.len(),
            server.summary()
        ));
    }
    found
}

// A connection that receives GOAWAY right after the server's SETTINGS — during the client's
// HTTP/2 handshake, before or while the first requests go out — with last stream id 0, 1 or
// 2^31−1 (the server processes the streams it keeps and answers them): every call either goes
// out on it (kept: answered) or, never processed, on the next connection (promise 1: calls
// waiting for the connection "go out on a new connection at once"; promise 2: a call "sent as
// the GOAWAY arrived" is sent again). Cold bursts of ten (the GOAWAY hits the probe connection)
// and a warm session whose reconnect gets the GOAWAY, twelve rounds each: no call may fail.
//
// FOUND: calls that never reached the server fail with `hyper::Error(Canceled, "connection was
// not ready")` (in one round all ten calls of a cold burst, with no second connection opened) or
// `Canceled, "connection closed"` (one call of the ten, the rest succeeding on connection 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_at_the_handshake_never_fails_an_unsent_call() {
    let variants: Vec<(&str, u32, bool, bool)> = vec![
        (
            "cold burst, GOAWAY(0) at the probe's handshake",
            0,
            false,
            false,
        ),
        (
            "cold burst, GOAWAY(1) at the probe's handshake",
            1,
            false,
            false,
        ),
        (
            "cold burst, GOAWAY(2^31-1) at the probe's handshake",
            MAX_STREAM_ID,
            false,
            false,
        ),
        (
            "warm session, GOAWAY(0) at the reconnect's handshake",
            0,
            true,
            false,
        ),
        (
            "warm session, GOAWAY(1) at the reconnect's handshake",
            1,
            true,
            false,
        ),
        (
            "warm session, GOAWAY(2^31-1) at the reconnect's handshake",
            MAX_STREAM_ID,
            true,
            false,
        ),
        // The connection closed at once after its GOAWAY: it can end before the session's
        // handshake is done. A soak of this file under load (session 35) found the calls waiting
        // on such a connection failing with `ChannelClosed` as a connect error, about one run of
        // the file in 35 (in the GOAWAY storms); these variants take the path without forcing
        // that timing.
        (
            "cold burst, GOAWAY(0) at the probe's handshake, closed at once",
            0,
            false,
            true,
        ),
        (
            "warm session, GOAWAY(0) at the reconnect's handshake, closed at once",
            0,
            true,
            true,
        ),
    ];
    let mut report = Vec::new();
    for (what, last, warm, close) in variants {
        let mut failed_rounds = 0;
        let mut example = None;
        for _ in 0..12 {
            let mut plan = Plan::goaway_at_open(last, NO_ERROR, Act::Answer);
            if close {
                plan.close_after_goaway = Some(Duration::ZERO);
            }
            let found = handshake_round(plan, warm).await;
            if !found.is_empty() {
                failed_rounds += 1;
                example.get_or_insert(found);
            }
        }
        if failed_rounds > 0 {
            report.push(format!(
                "{what}: {failed_rounds} of 12 rounds broke a promise, e.g. {example:#?}"
            ));
        }
    }
    assert!(report.is_empty(), "{report:#?}");
}

// EVERY connection sends GOAWAY right after its SETTINGS — last stream id 0 (a draining server),
// 1, or 2^31−1 (it processes whatever it gets) — and answers what it keeps. Ten POSTs: each ends
// within its bound (no loop), is received at most 4 times and processed at most once, succeeds
// exactly when it was processed; the connections opened are bounded (each call may cost 4); once
// the server serves normally, calls succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_at_the_handshake_of_every_connection_is_bounded() {
    for (last, code) in [
        (0, NO_ERROR),
        (0, ENHANCE_YOUR_CALM),
        (1, NO_ERROR),
        (MAX_STREAM_ID, NO_ERROR),
    ] {
        let what = format!("GOAWAY({last}, code {code}) at every handshake");
        let server = Server::start(100, Plan::goaway_at_open(last, code, Act::Answer)).await;
        let pool = pool_for(&server, None);
        let started = Instant::now();
        let outcomes = join(spawn_creates(&pool, "every", 10)).await;
        let took = started.elapsed();
        assert_no_violations(&server, &outcomes, false, &what);
        assert!(took < CALL_BOUND, "{what}: {took:?}; {}", server.summary());
        assert!(
            server.connections() <= 41,
            "{what}: {} connections for ten calls; {}",
            server.connections(),
            server.summary()
        );
        if last == 0 {
            assert!(
                outcomes.iter().all(|(_, r)| r.is_err()),
                "{what}: {outcomes:?}"
            );
        }
        server.set_default(Plan::acts(Act::Answer));
        let later = join(spawn_creates(&pool, "every-after", 5)).await;
        assert!(
            first_error(&later).is_none(),
            "{what}: once the server serves again: {:?}; {}",
            first_error(&later),
            server.summary()
        );
    }
}

// A draining server (GOAWAY with last stream id 0 at every handshake) and ONE call: it fails
// promptly after at most 4 sends, having opened at most 4 connections (one per send).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_to_a_draining_server_opens_at_most_four_connections() {
    let server = Server::start(100, Plan::goaway_at_open(0, NO_ERROR, Act::Answer)).await;
    let pool = pool_for(&server, None);
    let name = fresh_name("drain1");
    let started = Instant::now();
    let result = bounded_create(&pool, &name).await;
    let took = started.elapsed();
    sleep(ms(50)).await;
    let receipts = server.receipts_of(&name);
    assert!(result.is_err(), "{result:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(receipts.len() <= 4, "{}", describe(&receipts));
    assert!(
        server.connections() <= 4,
        "one call to a draining server opened {} connections (sent {} times); {}",
        server.connections(),
        receipts.len(),
        server.summary()
    );
}

// ---------------------------------------------------------------------------------------------
// 5. `max_streams_per_session(Some(n))` is a bound per connection.

/// `max_streams_per_session(Some(n))`, every connection holding its streams. n + 2 calls: n on
/// connection 1, 2 wait. GOAWAY (2^31−1, then the highest) keeps the n: the waiting go out on
/// connection 2 at once (min(2, n) of them at once); n more calls: connection 2 holds n (draining
/// n + new n), the rest wait. Connection 1's streams end: connection 2 still holds exactly n (the
/// old connection's slots are not added to the new one's). Everything then completes, processed
/// once; afterwards exactly n go out at once again.
async fn bound_per_connection(n: usize) {
    let n64 = n as u64;
    let what = format!("max_streams_per_session(Some({n}))");
    let server = Server::start(100, Plan::acts(Act::Hold)).await;
    let pool = pool_for(&server, Some(n));
    let mut tasks = spawn_creates(&pool, "bound", n + 2);
    assert!(
        wait_until(CALL_BOUND, || server.conn(1).held == n64).await,
        "{what}: {}",
        server.summary()
    );
    sleep(ms(100)).await;
    assert_eq!(
        (server.conn(1).streams, server.connections()),
        (n64, 1),
        "{what}: {}",
        server.summary()
    );
    server.send(
        1,
        Cmd::Batch(vec![
            goaway(Last::Max, NO_ERROR),
            goaway(Last::Highest, NO_ERROR),
        ]),
    );
    let moving = n64.min(2);
    let moved = wait_until(Duration::from_secs(1), || server.conn(2).held == moving).await;
    assert!(
        moved,
        "{what}: the calls waiting for a slot did not go out on a new connection within 1 s; {}",
        server.summary()
    );
    tasks.extend(spawn_creates(&pool, "bound-more", n));
    assert!(
        wait_until(CALL_BOUND, || server.conn(2).held == n64).await,
        "{what}: {}",
        server.summary()
    );
    sleep(ms(100)).await;
    assert_eq!(
        (
            server.conn(1).held,
            server.conn(2).held,
            server.conn(2).streams
        ),
        (n64, n64, n64),
        "{what}: draining connection n + new connection n, no more; {}",
        server.summary()
    );
    server.send(1, Cmd::AnswerHeld);
    assert!(
        wait_until(CALL_BOUND, || finished(&tasks) >= n).await,
        "{what}: {}",
        server.summary()
    );
    sleep(ms(100)).await;
    assert_eq!(
        server.conn(2).streams,
        n64,
        "{what}: after the draining connection's streams ended, connection 2 took more than n; {}",
        server.summary()
    );
    for _ in 0..300 {
        if finished(&tasks) == tasks.len() {
            break;
        }
        server.send(2, Cmd::AnswerHeld);
        sleep(ms(10)).await;
    }
    let outcomes = join(tasks).await;
    assert!(
        first_error(&outcomes).is_none(),
        "{what}: {:?}; {}",
        first_error(&outcomes),
        server.summary()
    );
    assert_no_violations(&server, &outcomes, true, &what);
    assert_eq!(server.conn(2).max_open, n64, "{what}: {}", server.summary());
    assert_eq!(server.connections(), 2, "{what}: {}", server.summary());
    assert_exact_bound(&server, &pool, n, &what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_bound_is_per_connection_and_does_not_grow_after_a_drain() {
    bound_per_connection(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_bound_of_one_is_per_connection_and_does_not_grow_after_a_drain() {
    bound_per_connection(1).await;
}

// n = 2: two calls held on connection 1 and four waiting for a slot when a GOAWAY with last
// stream id 0 arrives: the two held were not processed, so six calls compete for connection 2's
// two slots. Every one succeeds, processed once (the two held received twice), on two
// connections; afterwards exactly 2 go out at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_refusing_everything_with_the_bound_full() {
    let server = Server::start(100, Plan::acts(Act::Answer)).await;
    server.plan([Plan::acts(Act::Hold)]);
    let pool = pool_for(&server, Some(2));
    let mut tasks = spawn_creates(&pool, "refuse-all", 2);
    assert!(
        wait_until(CALL_BOUND, || server.conn(1).held == 2).await,
        "{}",
        server.summary()
    );
    tasks.extend(spawn_creates(&pool, "refuse-all-wait", 4));
    sleep(ms(30)).await;
    server.send(1, goaway(Last::Nth(0), NO_ERROR));
    let outcomes = join(tasks).await;
    assert!(
        first_error(&outcomes).is_none(),
        "{:?}; {}",
        first_error(&outcomes),
        server.summary()
    );
    assert_no_violations(&server, &outcomes, true, "GOAWAY(0) with the bound full");
    assert_eq!(
        (
            server.conn(1).streams,
            server.conn(2).streams,
            server.connections()
        ),
        (2, 6, 2),
        "{}",
        server.summary()
    );
    assert_exact_bound(&server, &pool, 2, "after GOAWAY(0) with the bound full").await;
}

// n = 2: two calls held on connection 1, six wait for a slot; three of the waiting are
// cancelled (their tasks aborted) around the moment a GOAWAY arrives — before it, right after
// sending it, after a yield, 1 ms after — and one of the two held calls is cancelled after it.
// The three remaining go out on connection 2 (2 at once, then 1) and succeed; the held one left
// succeeds when answered; afterwards exactly n go out at once (no slot leaked, none gained).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_slot_waiters_at_a_goaway_leak_no_slot() {
    for order in 0..4 {
        let what = format!("cancellation order {order}");
        let server = Server::start(100, Plan::acts(Act::Hold)).await;
        let pool = pool_for(&server, Some(2));
        let held = spawn_creates(&pool, "cancel-held", 2);
        assert!(
            wait_until(CALL_BOUND, || server.conn(1).held == 2).await,
            "{what}: {}",
            server.summary()
        );
        let waiting = spawn_creates(&pool, "cancel-wait", 6);
        sleep(ms(30)).await;
        assert_eq!(server.conn(1).streams, 2, "{what}: {}", server.summary());
        let go = || {
            server.send(
                1,
                Cmd::Batch(vec![
                    goaway(Last::Max, NO_ERROR),
                    goaway(Last::Highest, NO_ERROR),
                ]),
            );
        };
        let cancel = || waiting[..3].iter().for_each(JoinHandle::abort);
        match order {
            0 => {
                cancel();
                go();
            }
            1 => {
                go();
                cancel();
            }
            2 => {
                go();
                tokio::task::yield_now().await;
                cancel();
            }
            _ => {
                go();
                sleep(ms(1)).await;
                cancel();
            }
        }
        held[0].abort();
        assert!(
            wait_until(CALL_BOUND, || server.conn(2).held == 2).await,
            "{what}: the waiting calls did not go out on connection 2; {}",
            server.summary()
        );
        sleep(ms(50)).await;
        assert_eq!(
            (server.conn(2).held, server.conn(2).open),
            (2, 2),
            "{what}: {}",
            server.summary()
        );
        for _ in 0..200 {
            if waiting[3..].iter().all(JoinHandle::is_finished) {
                break;
            }
            server.send(2, Cmd::AnswerHeld);
            sleep(ms(10)).await;
        }
        server.send(1, Cmd::AnswerHeld);
        let mut outcomes = join(waiting).await;
        outcomes.extend(join(held).await);
        assert_eq!(outcomes.len(), 4, "{what}: {outcomes:?}");
        assert!(
            first_error(&outcomes).is_none(),
            "{what}: {:?}; {}",
            first_error(&outcomes),
            server.summary()
        );
        assert_no_violations(&server, &outcomes, true, &what);
        // (Not checked: `max_open` on connection 2. A call cancelled while in flight frees its
        // slot when dropped, and hyper resets its stream a moment later, so the server can see
        // n + 1 streams open for an instant — also without any GOAWAY.)
        assert_exact_bound(&server, &pool, 2, &what).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 6. GOAWAY storms under load.

/// Eight workers on a multi-threaded runtime create ConfigMaps in a loop through a session with
/// `max_streams_per_session(Some(n))` for `run`, the server answering each after 2 ms, while a
/// GOAWAY goes to the newest connection every 3–12 ms (2^31−1 then the highest 2 ms later; the
/// highest; the highest minus 4, refusing streams still pending; 2^31−1 and the highest in one
/// record — some reach a connection still in its handshake). A connection closes gracefully
/// 30 ms after its GOAWAY once its kept streams are answered. With `cancel`, every third call is
/// dropped after 0–4 ms (waiting for a slot, in flight, or done).
async fn storm(n: usize, cancel: bool, run: Duration) -> (Server, Arc<SessionPool>, Vec<Outcome>) {
    let server = Server::start(
        100,
        Plan {
            close_after_goaway: Some(ms(30)),
            ..Plan::acts(Act::Delay(2))
        },
    )
    .await;
    let pool = pool_for(&server, Some(n));
    assert_eq!(
        bounded_create(&pool, &fresh_name("storm-warm")).await,
        Ok(())
    );
    let stop = Instant::now() + run;
    let workers: Vec<JoinHandle<Vec<Outcome>>> = (0..8u64)
        .map(|w| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut i = 0u64;
                while Instant::now() < stop {
                    i += 1;
                    let name = fresh_name(&format!("storm{w}"));
                    let result = if cancel && (w + i).is_multiple_of(3) {
                        timeout(ms(i % 5), create(&pool, &name))
                            .await
                            .unwrap_or_else(|_| Err(CANCELLED.to_owned()))
                    } else {
                        bounded_create(&pool, &name).await
                    };
                    outcomes.push((name, result));
                }
                outcomes
            })
        })
        .collect();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    while Instant::now() < stop {
        sleep(ms(3 + xorshift(&mut rng) % 10)).await;
        let newest = server.connections();
        match xorshift(&mut rng) % 4 {
            0 => {
                server.send(newest, goaway(Last::Max, NO_ERROR));
                sleep(ms(2)).await;
                server.send(newest, goaway(Last::Highest, NO_ERROR));
            }
            1 => server.send(newest, goaway(Last::Highest, NO_ERROR)),
            2 => server.send(newest, goaway(Last::HighestMinus(4), NO_ERROR)),
            _ => server.send(
                newest,
                Cmd::Batch(vec![
                    goaway(Last::Max, NO_ERROR),
                    goaway(Last::Highest, NO_ERROR),
                ]),
            ),
        }
    }
    let outcomes: Vec<Outcome> = timeout(Duration::from_secs(20), join_all(workers))
        .await
        .expect("storm workers did not end")
        .into_iter()
        .flat_map(|w| w.expect("a storm worker panicked"))
        .collect();
    (server, pool, outcomes)
}

// The storm without cancellations, n = 3: no call hangs; no request is processed twice or sent
// more than 4 times; a call the server answered never fails; no connection ever had more than 3
// streams open at the server; afterwards exactly 3 calls go out at once. (Calls that failed
// although never processed are the finding of the next test; here they must stay rare.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_storm_every_post_at_most_once_and_the_bound_holds() {
    let (server, pool, outcomes) = storm(3, false, ms(1500)).await;
    assert!(outcomes.len() > 100, "only {} calls", outcomes.len());
    assert!(server.connections() > 20, "{}", server.summary());
    assert_no_violations(&server, &outcomes, false, "storm");
    let failed = outcomes.iter().filter(|(_, r)| r.is_err()).count();
    assert!(
        failed * 20 <= outcomes.len(),
        "{failed} of {} calls failed: {:?}; {}",
        outcomes.len(),
        first_error(&outcomes),
        server.summary()
    );
    let max_open = server
        .stats
        .conns
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.max_open)
        .max()
        .unwrap_or(0);
    assert!(
        max_open <= 3,
        "a connection had {max_open} streams open with max_streams_per_session(Some(3)); {}",
        server.summary()
    );
    assert_exact_bound(&server, &pool, 3, "after the storm").await;
}

// The same storm, strict on how unprocessed calls fail: a call the server never processed
// (refused by a GOAWAY's last stream id, or never received at all) fails only once its resends
// are spent, with the server's GOAWAY or the connection's end as its error, never another one.
// Four storms of 1.5 s, with two threads burning CPU beside the runtime (the races need an
// oversubscribed machine, as when the whole file runs).
//
// FOUND, fixed (session 35): calls failed with `Canceled, "connection closed"` after 0 sends
// (never received by the server) or after 1 send refused by a GOAWAY, the next connection having
// received no stream at all: a fresh connection whose GOAWAY came with its first frames handed its
// requests back unsent, and the session did not resend them. This test then asserted 4 sends
// before any failure; the guide's budget is 3 resends *in all*, moves of unsent requests to a new
// connection included (invisible from outside), and in these storms (a GOAWAY every 3–12 ms, many
// at the handshake) a few calls in a thousand spend it: the session's own trace showed every
// remaining failure at 3 resends, on GOAWAY'd connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_storm_unprocessed_calls_get_their_resends() {
    // Two threads burning CPU beside the runtime's two workers: the race needs an
    // oversubscribed machine (as when the whole file runs).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let burners: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 1u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(xorshift(&mut x));
                }
            })
        })
        .collect();
    let mut report = Vec::new();
    for round in 1..=4 {
        let (server, _pool, outcomes) = storm(3, false, ms(1500)).await;
        let found = violations(&server, &outcomes, true);
        if !found.is_empty() {
            report.push(format!(
                "storm {round}: {} of {} calls: {:#?}",
                found.len(),
                outcomes.len(),
                &found[..found.len().min(3)]
            ));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for b in burners {
        b.join().unwrap();
    }
    assert!(report.is_empty(), "{report:#?}");
}

// The storm with every third call dropped after 0–4 ms, n = 2: nothing processed twice or sent
// more than 4 times, no call hangs, no answered call fails, and afterwards exactly 2 calls go out
// at once (no stream slot leaked by a cancellation racing a GOAWAY). (How unprocessed calls may
// fail: `goaway_storm_unprocessed_calls_get_their_resends`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_storm_with_cancellations_leaks_no_slot() {
    let (server, pool, outcomes) = storm(2, true, ms(1200)).await;
    let cancelled = outcomes
        .iter()
        .filter(|(_, r)| r.as_ref().is_err_and(|e| e == CANCELLED))
        .count();
    assert!(cancelled > 10, "only {cancelled} cancelled calls");
    assert_no_violations(&server, &outcomes, false, "storm with cancellations");
    assert_exact_bound(&server, &pool, 2, "after the storm with cancellations").await;
}
