//! The token file's re-reads in virtual time: due reads waited for at most the bound, one read
//! at a time, failures keeping the last token, cancelled waits and dropped reads never freezing
//! later reads.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;
use tower::ServiceExt as _;

use super::*;

const WAIT: Duration = Duration::from_secs(1);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A reader over a file held in memory: counts its reads. `None` contents: the read waits (a
/// hung mount) until contents are set and [`Fake::release`] is called; `Err`: a file that
/// cannot be read.
#[derive(Clone, Default)]
struct Fake {
    reads: Arc<AtomicUsize>,
    contents: Arc<Mutex<Option<io::Result<Vec<u8>>>>>,
    gate: Arc<Notify>,
}

impl Fake {
    fn holding(text: &str) -> Self {
        let fake = Self::default();
        fake.set(Some(Ok(text.as_bytes().to_vec())));
        fake
    }

    fn set(&self, contents: Option<io::Result<Vec<u8>>>) {
        *self.contents.lock().unwrap() = contents;
    }

    /// Let hung reads end with the contents set now.
    fn release(&self) {
        self.gate.notify_waiters();
    }

    fn take(&self) -> Option<io::Result<Vec<u8>>> {
        match &*self.contents.lock().unwrap() {
            None => None,
            Some(Ok(bytes)) => Some(Ok(bytes.clone())),
            Some(Err(e)) => Some(Err(io::Error::new(e.kind(), e.to_string()))),
        }
    }

    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }

    fn file(&self, first: &str) -> Arc<TokenFile> {
        let fake = self.clone();
        TokenFile::with_reader(
            PathBuf::from("/var/run/secrets/token"),
            bearer(first.as_bytes()).unwrap(),
            WAIT,
            Arc::new(move |_path| {
                fake.reads.fetch_add(1, Ordering::SeqCst);
                let fake = fake.clone();
                Box::pin(async move {
                    loop {
                        let released = fake.gate.notified();
                        if let Some(result) = fake.take() {
                            return result;
                        }
                        released.await;
                    }
                })
            }),
        )
    }
}

/// Let spawned reads run (virtual time does not move).
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// The `Authorization` a request through the layer carries, and how long it waited.
async fn send(file: &Arc<TokenFile>) -> (String, Duration) {
    let service = TokenFileLayer::new(Some(Arc::clone(file))).layer(tower::service_fn(
        |request: Request<()>| async move {
            let header = request.headers().get(AUTHORIZATION).cloned();
            Ok::<_, Infallible>(header)
        },
    ));
    let start = Instant::now();
    let header = service.oneshot(Request::new(())).await.unwrap().unwrap();
    assert!(header.is_sensitive(), "the token is marked sensitive");
    (header.to_str().unwrap().to_string(), start.elapsed())
}

/// Counts the `poll_ready` calls it passes on; not ready while `open` is false.
struct CountReady<S> {
    inner: S,
    polls: Arc<AtomicUsize>,
    open: Arc<AtomicBool>,
}

impl<S: Service<Request<()>>> Service<Request<()>> for CountReady<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        if !self.open.load(Ordering::SeqCst) {
            // Woken by the test's next poll.
            return Poll::Pending;
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<()>) -> S::Future {
        self.inner.call(request)
    }
}

/// A layered service over [`CountReady`]: its poll count and its switch.
fn counted(
    file: Arc<TokenFile>,
) -> (
    impl Service<Request<()>, Response = Option<HeaderValue>, Error = Infallible>,
    Arc<AtomicUsize>,
    Arc<AtomicBool>,
) {
    let (polls, open) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(true)),
    );
    let inner = tower::service_fn(|request: Request<()>| async move {
        Ok::<_, Infallible>(request.headers().get(AUTHORIZATION).cloned())
    });
    let service = TokenFileLayer::new(Some(file)).layer(CountReady {
        inner,
        polls: Arc::clone(&polls),
        open: Arc::clone(&open),
    });
    (service, polls, open)
}

#[test]
fn bearer_trims_and_refuses_what_no_header_can_hold() {
    assert_eq!(bearer(b"abc").unwrap(), "Bearer abc");
    assert_eq!(bearer(b"  abc\n").unwrap(), "Bearer abc");
    assert_eq!(bearer(b"abc\r\n").unwrap(), "Bearer abc");
    assert_eq!(
        bearer(b"abc\x0b\n").unwrap(),
        "Bearer abc",
        "a vertical tab"
    );
    assert_eq!(bearer(b"\x0c abc \x0c").unwrap(), "Bearer abc");
    assert_eq!(
        bearer("\u{2003}abc\u{a0}\u{85}\n".as_bytes()).unwrap(),
        "Bearer abc",
        "Unicode's white space, as Go's TrimSpace"
    );
    assert_eq!(
        bearer(b"\x0b\xffabc\t").unwrap().as_bytes(),
        b"Bearer \xffabc",
        "not UTF-8: ASCII white space"
    );
    assert!(bearer(b"abc").unwrap().is_sensitive());
    for bad in [&b""[..], b"\n", b"  \t ", b"ab\ncd", b"ab\0cd", b"ab\x7fcd"] {
        assert_eq!(bearer(bad), Err(InvalidToken), "{bad:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_rotated_token_is_sent_once_the_last_read_is_50_s_old() {
    let fake = Fake::holding("first");
    let file = fake.file("first");
    fake.set(Some(Ok(b"second\n".to_vec())));
    tokio::time::advance(secs(49)).await;
    assert_eq!(send(&file).await.0, "Bearer first");
    settle().await;
    assert_eq!(fake.reads(), 0, "not due before 50 s");
    tokio::time::advance(secs(1)).await;
    let (header, waited) = send(&file).await;
    assert_eq!(header, "Bearer second", "the due read is waited for");
    assert_eq!(
        waited,
        Duration::ZERO,
        "a read that answers at once costs no time"
    );
    assert_eq!(fake.reads(), 1);
    for _ in 0..10 {
        assert_eq!(send(&file).await.0, "Bearer second");
    }
    settle().await;
    assert_eq!(fake.reads(), 1, "not due again for 50 s");
    tokio::time::advance(secs(50)).await;
    send(&file).await;
    assert_eq!(fake.reads(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_hung_read_is_waited_for_at_most_the_bound_and_never_doubled() {
    let fake = Fake::holding("first");
    let file = fake.file("first");
    fake.set(None);
    tokio::time::advance(RELOAD_AFTER).await;
    // Concurrent requests as the read falls due: one read; each waits at most the bound.
    let sent = futures::future::join_all((0..8).map(|_| send(&file))).await;
    for (header, waited) in sent {
        assert_eq!(header, "Bearer first", "the last token read is sent");
        assert_eq!(waited, WAIT, "waited exactly the bound");
    }
    assert_eq!(fake.reads(), 1, "one read at a time");
    // Past the bound, the read still hanging: no wait, no second read, however long it hangs.
    for _ in 0..5 {
        let (header, waited) = send(&file).await;
        assert_eq!((header.as_str(), waited), ("Bearer first", Duration::ZERO));
        tokio::time::advance(secs(600)).await;
    }
    assert_eq!(
        fake.reads(),
        1,
        "a hung read keeps later ones from starting"
    );
    // The mount answers again: the token follows, and reads are due again 50 s later.
    fake.set(Some(Ok(b"second".to_vec())));
    fake.release();
    settle().await;
    assert_eq!(send(&file).await.0, "Bearer second");
    tokio::time::advance(RELOAD_AFTER).await;
    send(&file).await;
    assert_eq!(fake.reads(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failed_or_invalid_read_keeps_the_last_token_until_the_next_is_due() {
    let fake = Fake::holding("first");
    let file = fake.file("first");
    fake.set(Some(Err(io::Error::new(io::ErrorKind::NotFound, "gone"))));
    tokio::time::advance(RELOAD_AFTER).await;
    assert_eq!(
        send(&file).await,
        ("Bearer first".to_string(), Duration::ZERO)
    );
    assert_eq!(fake.reads(), 1);
    tokio::time::advance(secs(49)).await;
    send(&file).await;
    assert_eq!(
        fake.reads(),
        1,
        "a failed read counts as a read: the next is 50 s later"
    );
    fake.set(Some(Ok(b"\n".to_vec())));
    tokio::time::advance(secs(1)).await;
    assert_eq!(
        send(&file).await.0,
        "Bearer first",
        "an empty file keeps the last"
    );
    assert_eq!(fake.reads(), 2);
    fake.set(Some(Ok(b"third".to_vec())));
    tokio::time::advance(RELOAD_AFTER).await;
    assert_eq!(send(&file).await.0, "Bearer third");
}

#[tokio::test(start_paused = true)]
async fn the_inner_service_is_not_asked_to_be_ready_while_a_read_is_waited_for() {
    let fake = Fake::holding("first");
    let file = fake.file("first");
    fake.set(None);
    let (mut service, polls, _open) = counted(file);
    tokio::time::advance(RELOAD_AFTER).await;
    let waiting = std::future::poll_fn(|cx| service.poll_ready(cx));
    tokio::pin!(waiting);
    assert!(
        futures::poll!(&mut waiting).is_pending(),
        "waits for the read"
    );
    tokio::time::advance(WAIT / 2).await;
    assert!(futures::poll!(&mut waiting).is_pending());
    assert_eq!(
        polls.load(Ordering::SeqCst),
        0,
        "nothing below is asked to be ready meanwhile"
    );
    tokio::time::advance(WAIT / 2).await;
    waiting.await.unwrap();
    assert_eq!(polls.load(Ordering::SeqCst), 1);
}

// A service below already asked and not ready (a request queued for an HTTP/1.1 slot) keeps
// being polled: no wait starts in front of it when a read falls due meanwhile.
#[tokio::test(start_paused = true)]
async fn no_wait_starts_once_the_service_below_has_been_asked() {
    let fake = Fake::holding("first");
    let file = fake.file("first");
    fake.set(None);
    let (mut service, polls, open) = counted(file);
    open.store(false, Ordering::SeqCst);
    let ready = std::future::poll_fn(|cx| service.poll_ready(cx));
    tokio::pin!(ready);
    assert!(futures::poll!(&mut ready).is_pending());
    assert_eq!(polls.load(Ordering::SeqCst), 1);
    tokio::time::advance(RELOAD_AFTER).await;
    assert!(futures::poll!(&mut ready).is_pending());
    assert_eq!(
        polls.load(Ordering::SeqCst),
        2,
        "asked again, not held by a wait"
    );
    settle().await;
    assert_eq!(fake.reads(), 1, "the due read started all the same");
    open.store(true, Ordering::SeqCst);
    assert!(futures::poll!(&mut ready).is_ready());
}

// A request cancelled while it waits leaves its wait behind in the service; the next request
// checks the file's state again instead of going out on whatever the wait left.
#[tokio::test(start_paused = true)]
async fn a_wait_left_by_a_cancelled_request_does_not_skip_the_next_check() {
    let fake = Fake::holding("first");
    let file = fake.file("first");
    fake.set(None);
    let (mut service, _polls, _open) = counted(Arc::clone(&file));
    tokio::time::advance(RELOAD_AFTER).await;
    {
        let waiting = std::future::poll_fn(|cx| service.poll_ready(cx));
        tokio::pin!(waiting);
        assert!(futures::poll!(&mut waiting).is_pending());
    }
    fake.set(Some(Ok(b"second".to_vec())));
    fake.release();
    settle().await;
    tokio::time::advance(secs(100)).await;
    fake.set(Some(Ok(b"third".to_vec())));
    std::future::poll_fn(|cx| service.poll_ready(cx))
        .await
        .unwrap();
    let header = service.call(Request::new(())).await.unwrap().unwrap();
    assert_eq!(
        header, "Bearer third",
        "the due read was started and waited for"
    );
    assert_eq!(fake.reads(), 2);
}

// A read whose task is dropped before it runs (its runtime shut down) ends as a failed read:
// the next read starts when due, instead of never.
#[test]
fn a_read_whose_task_is_dropped_does_not_stop_later_reads() {
    let fake = Fake::holding("first");
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let file = first.block_on(async {
        let file = fake.file("first");
        tokio::time::advance(RELOAD_AFTER).await;
        assert!(file.check(false).is_none());
        assert!(file.lock().reading.is_some(), "a read was spawned");
        file
    });
    drop(first);
    assert!(file.lock().reading.is_none(), "the dropped read ended");
    assert_eq!(fake.reads(), 0, "it never ran");
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    fake.set(Some(Ok(b"second".to_vec())));
    second.block_on(async {
        // `read_at` is the dropped read's end, in the first runtime's clock: the next read is
        // due 50 s after it, whatever this clock says.
        file.lock().read_at = Instant::now() - RELOAD_AFTER;
        send(&file).await;
        settle().await;
        assert_eq!(send(&file).await.0, "Bearer second");
    });
    assert_eq!(fake.reads(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_file_itself_is_read_again_on_the_blocking_pool() {
    let dir = std::env::temp_dir().join(format!("k8s-session-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("token");
    std::fs::write(&path, "first\n").unwrap();
    let file = TokenFile::new(path.clone(), bearer(b"first").unwrap(), WAIT);
    std::fs::write(&path, "second\n").unwrap();
    assert_eq!(send(&file).await.0, "Bearer first");
    tokio::time::advance(RELOAD_AFTER).await;
    assert_eq!(send(&file).await.0, "Bearer second");
    std::fs::remove_file(&path).unwrap();
    tokio::time::advance(RELOAD_AFTER).await;
    assert_eq!(
        send(&file).await.0,
        "Bearer second",
        "a removed file keeps the last"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn debug_shows_the_path_and_never_the_token() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let file = Fake::holding("s3cr3t").file("s3cr3t");
    let text = format!("{:?}", TokenFileLayer::new(Some(file)));
    assert!(text.contains("/var/run/secrets/token"), "{text}");
    assert!(!text.contains("s3cr3t"), "{text}");
}
