//! The token file's re-reads in virtual time: due reads picked up by the next request, one read
//! at a time, a hung read waited for at most the bound, failures keeping the last token.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};

use tower::ServiceExt as _;

use super::*;

const WAIT: Duration = Duration::from_secs(1);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A reader over a file held in memory: counts its reads; `None` contents: a read that never
/// returns (a hung mount); `Err`: a file that cannot be read.
#[derive(Clone, Default)]
struct Fake {
    reads: Arc<AtomicUsize>,
    contents: Arc<Mutex<Option<io::Result<Vec<u8>>>>>,
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

    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }

    fn file(&self, first: &str) -> Arc<TokenFile> {
        let fake = self.clone();
        TokenFile::with_reader(
            PathBuf::from("/var/run/secrets/token"),
            bearer(first.as_bytes()).unwrap(),
            WAIT,
            RELOAD_AFTER,
            Arc::new(move |_path| {
                fake.reads.fetch_add(1, Ordering::SeqCst);
                let contents = match &*fake.contents.lock().unwrap() {
                    None => None,
                    Some(Ok(bytes)) => Some(Ok(bytes.clone())),
                    Some(Err(e)) => Some(Err(io::Error::new(e.kind(), e.to_string()))),
                };
                Box::pin(async move {
                    match contents {
                        Some(result) => result,
                        None => std::future::pending().await,
                    }
                })
            }),
        )
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

/// Counts the `poll_ready` calls it passes on.
struct CountReady<S>(S, Arc<AtomicUsize>);

impl<S: Service<Request<()>>> Service<Request<()>> for CountReady<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<()>) -> S::Future {
        self.0.call(request)
    }
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
    let ready = Arc::new(AtomicUsize::new(0));
    let inner = tower::service_fn(|_: Request<()>| async { Ok::<_, Infallible>(()) });
    let mut service = TokenFileLayer::new(Some(file)).layer(CountReady(inner, Arc::clone(&ready)));
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
        ready.load(Ordering::SeqCst),
        0,
        "nothing below is made ready meanwhile"
    );
    tokio::time::advance(WAIT / 2).await;
    waiting.await.unwrap();
    assert_eq!(ready.load(Ordering::SeqCst), 1);
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
