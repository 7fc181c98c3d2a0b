//! A TLS-terminating TCP proxy on loopback: a stable front (one port, one CA) for a backend that
//! is killed and restarted with a new certificate, as a load balancer is for a storage node.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use testkit::tls::{ClientAuth, TestCa};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[derive(Clone)]
struct Upstream {
    port: u16,
    connector: TlsConnector,
}

/// The proxy. Connections arriving while no backend is set, or whose backend refuses them, are
/// closed at once (the client sees a transport error). Stops when dropped.
pub(crate) struct TlsProxy {
    addr: SocketAddr,
    ca: TestCa,
    upstream: Arc<Mutex<Option<Upstream>>>,
    accepted: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl TlsProxy {
    /// Listen on a free loopback port, with a certificate from a fresh CA.
    pub(crate) async fn start() -> Self {
        testkit::tls::install_crypto_provider();
        let ca = TestCa::new("proxy").expect("proxy CA");
        let leaf = ca.server_leaf().expect("proxy leaf");
        let acceptor = TlsAcceptor::from(
            ca.server_config(&leaf, ClientAuth::None)
                .expect("proxy server config"),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let upstream: Arc<Mutex<Option<Upstream>>> = Arc::default();
        let (accepted, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let task = {
            let (upstream, accepted, refused) =
                (upstream.clone(), accepted.clone(), refused.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let target = upstream.lock().unwrap().clone();
                    let (acceptor, refused) = (acceptor.clone(), refused.clone());
                    tokio::spawn(async move {
                        if let Err(Refused) = serve(inbound, acceptor, target).await {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
            })
        };
        Self {
            addr,
            ca,
            upstream,
            accepted,
            refused,
            task,
        }
    }

    /// Forward new connections to the backend on `port` whose certificate `ca` signed.
    pub(crate) fn set_upstream(&self, port: u16, ca: &TestCa) {
        let connector = TlsConnector::from(ca.client_config(None).expect("client config"));
        *self.upstream.lock().unwrap() = Some(Upstream { port, connector });
    }

    /// The CA clients must trust.
    pub(crate) fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// The proxy's port.
    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted, and those closed without reaching a backend (refused).
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.accepted.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

/// The backend could not be reached: the client's connection was closed unanswered.
struct Refused;

async fn serve(
    inbound: TcpStream,
    acceptor: TlsAcceptor,
    target: Option<Upstream>,
) -> Result<(), Refused> {
    let target = target.ok_or(Refused)?;
    // Connect to the backend first: if it is dead the client's connection just closes.
    let outbound = TcpStream::connect(("127.0.0.1", target.port))
        .await
        .map_err(|_| Refused)?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")
        .expect("an IP server name")
        .to_owned();
    let Ok(mut outbound) = target.connector.connect(name, outbound).await else {
        return Err(Refused);
    };
    // From here on, errors are the connection ending (client or backend gone): not a refusal.
    if let Ok(mut inbound) = acceptor.accept(inbound).await {
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    }
    Ok(())
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
