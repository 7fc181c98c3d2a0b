//! [`Azurite`]: the emulator as a child process on a free loopback port, HTTPS + `--oauth basic`,
//! killed when the handle drops — and by a watchdog if the test process dies first.

use std::fmt;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RetryOptions, Transport, Url};
use azure_storage_blob::{BlobServiceClient, BlobServiceClientOptions};

use super::error::AzuriteError;
use super::locate::azurite_bin;
use crate::tls::{Leaf, TestCa, install_crypto_provider};

/// The account every Azurite serves.
pub const ACCOUNT: &str = "devstoreaccount1";

/// Runs `"$@"` (Azurite) in the background, writes its pid, and kills it when this shell's
/// stdin closes: when the handle drops, or when the test process dies in any way. Exits with
/// Azurite's status when Azurite exits first.
const WATCHDOG: &str = r#"exec 3<&0
"$@" </dev/null >"$TESTKIT_OUT" 2>"$TESTKIT_ERR" &
child=$!
echo "$child" >"$TESTKIT_PIDFILE"
{ cat <&3 >/dev/null; kill -9 "$child" 2>/dev/null; } &
exec 3<&-
wait "$child""#;

/// How to start Azurite. `Default` is what tests want.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AzuriteOptions {
    /// A fixed port; `None` picks a free one (and retries on a lost race).
    pub port: Option<u16>,
    /// How long to wait for Azurite to answer (default 30 s).
    pub startup_timeout: Duration,
    /// The `azurite-blob` entry point; `None`: `TESTKIT_AZURITE_BIN`, else the xtask install.
    pub binary: Option<PathBuf>,
}

impl Default for AzuriteOptions {
    fn default() -> Self {
        Self {
            port: None,
            startup_timeout: Duration::from_secs(30),
            binary: None,
        }
    }
}

/// A running Azurite blob service. Dropping it kills the process and removes its scratch dir.
pub struct Azurite {
    child: Child,
    watchdog: Option<ChildStdin>,
    pid: u32,
    port: u16,
    ca: TestCa,
    scratch: PathBuf,
    endpoint: Url,
}

impl fmt::Debug for Azurite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Azurite")
            .field("endpoint", &self.endpoint.as_str())
            .field("pid", &self.pid)
            .field("scratch", &self.scratch)
            .finish_non_exhaustive()
    }
}

fn free_port() -> Result<u16, AzuriteError> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(AzuriteError::Scratch)?;
    Ok(listener.local_addr().map_err(AzuriteError::Scratch)?.port())
}

fn scratch_dir() -> Result<PathBuf, AzuriteError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("testkit-azurite-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(AzuriteError::Scratch)?;
    Ok(dir)
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl Azurite {
    /// Start with [`AzuriteOptions::default`].
    pub async fn start() -> Result<Self, AzuriteError> {
        Self::start_with(AzuriteOptions::default()).await
    }

    /// Start Azurite and wait until it answers HTTPS requests.
    pub async fn start_with(options: AzuriteOptions) -> Result<Self, AzuriteError> {
        install_crypto_provider();
        let binary = options
            .binary
            .clone()
            .unwrap_or_else(|| azurite_bin(|k| std::env::var(k).ok()));
        if let Some(port) = options.port
            && TcpListener::bind(("127.0.0.1", port)).is_err()
        {
            return Err(AzuriteError::PortInUse { port });
        }
        if !binary.exists() {
            return Err(AzuriteError::NotInstalled { path: binary });
        }
        let ca = TestCa::new("azurite").map_err(AzuriteError::Tls)?;
        let leaf = ca.server_leaf().map_err(AzuriteError::Tls)?;
        let attempts = if options.port.is_some() { 1 } else { 3 };
        let mut last = None;
        for _ in 0..attempts {
            let port = match options.port {
                Some(port) => port,
                None => free_port()?,
            };
            match Self::launch(&binary, &ca, &leaf, port, options.startup_timeout).await {
                Err(AzuriteError::PortInUse { .. }) if options.port.is_none() => {
                    last = Some(AzuriteError::PortInUse { port });
                }
                other => {
                    return other.map(|(child, watchdog, pid, scratch)| {
                        let endpoint = Url::parse(&format!("https://127.0.0.1:{port}/{ACCOUNT}"))
                            .expect("a loopback URL parses");
                        Self {
                            child,
                            watchdog: Some(watchdog),
                            pid,
                            port,
                            ca,
                            scratch,
                            endpoint,
                        }
                    });
                }
            }
        }
        Err(last.unwrap_or(AzuriteError::PortInUse { port: 0 }))
    }

    async fn launch(
        binary: &Path,
        ca: &TestCa,
        leaf: &Leaf,
        port: u16,
        timeout: Duration,
    ) -> Result<(Child, ChildStdin, u32, PathBuf), AzuriteError> {
        let scratch = scratch_dir()?;
        let write = |name: &str, text: &str| {
            std::fs::write(scratch.join(name), text).map_err(AzuriteError::Scratch)
        };
        write("cert.pem", leaf.cert_pem())?;
        write("key.pem", leaf.key_pem())?;
        let (out, err, pidfile) = (
            scratch.join("azurite.out"),
            scratch.join("azurite.err"),
            scratch.join("azurite.pid"),
        );
        let mut child = Command::new("sh")
            .args(["-c", WATCHDOG, "testkit-azurite-watchdog"])
            .arg(binary)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args(["--oauth", "basic", "--cert", "cert.pem", "--key", "key.pem"])
            .args([
                "--inMemoryPersistence",
                "--disableTelemetry",
                "--skipApiVersionCheck",
            ])
            .env("TESTKIT_OUT", &out)
            .env("TESTKIT_ERR", &err)
            .env("TESTKIT_PIDFILE", &pidfile)
            .current_dir(&scratch)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(AzuriteError::Spawn)?;
        let watchdog = child.stdin.take().expect("stdin is piped");
        let probe = ca_client(ca, Some(Duration::from_secs(2)))?;
        let url = format!("https://127.0.0.1:{port}/{ACCOUNT}?comp=list");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let stderr = format!("{}\n{}", tail(&err), tail(&out)).trim().to_owned();
                let _ = std::fs::remove_dir_all(&scratch);
                if stderr.contains("EADDRINUSE") {
                    return Err(AzuriteError::PortInUse { port });
                }
                return Err(AzuriteError::Exited {
                    status: status.to_string(),
                    stderr,
                });
            }
            // Any HTTP answer over TLS signed by our CA means: our Azurite is up.
            if probe.get(&url).send().await.is_ok() {
                let pid = std::fs::read_to_string(&pidfile)
                    .ok()
                    .and_then(|p| p.trim().parse().ok())
                    .unwrap_or(0);
                return Ok((child, watchdog, pid, scratch));
            }
            if Instant::now() >= deadline {
                let stderr = tail(&err);
                stop(&mut child, Some(watchdog));
                let _ = std::fs::remove_dir_all(&scratch);
                return Err(AzuriteError::Timeout {
                    waited: timeout,
                    stderr,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `https://127.0.0.1:<port>/devstoreaccount1` (no trailing slash: the SDK appends paths).
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// The port Azurite listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Azurite's process id (0 if it could not be read).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The CA that signed Azurite's certificate.
    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// Azurite's access log and errors so far (its stdout and stderr).
    pub fn logs(&self) -> String {
        let out = std::fs::read_to_string(self.scratch.join("azurite.out")).unwrap_or_default();
        let err = std::fs::read_to_string(self.scratch.join("azurite.err")).unwrap_or_default();
        format!("{out}{err}")
    }

    /// A reqwest client trusting only this Azurite's CA, with decompression off (as the
    /// storage SDK needs).
    pub fn reqwest_client(&self) -> Result<reqwest::Client, AzuriteError> {
        ca_client(&self.ca, None)
    }

    /// Azure `ClientOptions` sending through [`Azurite::reqwest_client`], SDK retries off.
    pub fn client_options(&self) -> Result<ClientOptions, AzuriteError> {
        Ok(ClientOptions {
            transport: Some(Transport::new(Arc::new(self.reqwest_client()?))),
            retry: RetryOptions::none(),
            ..ClientOptions::default()
        })
    }

    /// A `BlobServiceClient` for this Azurite's account, authenticating with `credential`
    /// (bearer tokens: the path real Azure uses), over [`Azurite::client_options`].
    pub fn blob_service_client(
        &self,
        credential: Arc<dyn TokenCredential>,
    ) -> Result<BlobServiceClient, AzuriteError> {
        let options = BlobServiceClientOptions {
            client_options: self.client_options()?,
            ..BlobServiceClientOptions::default()
        };
        BlobServiceClient::new(self.endpoint.clone(), Some(credential), Some(options))
            .map_err(AzuriteError::Sdk)
    }
}

fn ca_client(ca: &TestCa, timeout: Option<Duration>) -> Result<reqwest::Client, AzuriteError> {
    let cert = reqwest::Certificate::from_der(&ca.cert_der()).map_err(AzuriteError::Client)?;
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([cert])
        .no_gzip()
        .no_deflate();
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    builder.build().map_err(AzuriteError::Client)
}

/// Close the watchdog's stdin (it kills Azurite), wait briefly for the shell, then kill it.
fn stop(child: &mut Child, watchdog: Option<ChildStdin>) {
    drop(watchdog);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Azurite {
    fn drop(&mut self) {
        stop(&mut self.child, self.watchdog.take());
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}
