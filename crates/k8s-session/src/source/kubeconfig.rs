//! The kubeconfig source: an in-memory `Kubeconfig` or a file, read on every session build.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kube::config::Kubeconfig;

use super::{ClusterCredentials, ClusterMaterial};
use crate::{CredentialsError, SessionKey};

/// Cluster material from a kubeconfig (K2), held in memory or read from a file.
///
/// Every key uses the kubeconfig's current context unless routed to another context with
/// [`with_context`](Self::with_context); with [`strict`](Self::strict), unrouted keys are an
/// error instead. A file is re-read on every session build (never on a hit), so a rotated
/// kubeconfig is picked up by the next session; it is only ever read, never written.
///
/// ```
/// use k8s_session::{KubeconfigSource, SessionKey};
///
/// let yaml = r#"
/// apiVersion: v1
/// kind: Config
/// clusters:
/// - name: east
///   cluster: { server: "https://127.0.0.1:6443" }
/// users:
/// - name: reader
///   user: { token: "not-a-real-token" }
/// contexts:
/// - name: east-reader
///   context: { cluster: east, user: reader }
/// current-context: east-reader
/// "#;
/// let key = SessionKey::new("sub", "rg", "east");
/// let source = KubeconfigSource::from_yaml(yaml)?.with_context(key, "east-reader");
/// # Ok::<(), k8s_session::CredentialsError>(())
/// ```
pub struct KubeconfigSource {
    origin: Origin,
    contexts: HashMap<SessionKey, String>,
    strict: bool,
    expires_at: Option<SystemTime>,
}

enum Origin {
    Memory(Box<Kubeconfig>),
    File(PathBuf),
}

impl KubeconfigSource {
    /// A source serving an in-memory kubeconfig.
    pub fn from_kubeconfig(kubeconfig: Kubeconfig) -> Self {
        Self::with_origin(Origin::Memory(Box::new(kubeconfig)))
    }

    /// A source serving a kubeconfig parsed from YAML text.
    pub fn from_yaml(yaml: &str) -> Result<Self, CredentialsError> {
        let kubeconfig = parse(yaml)?;
        Ok(Self::from_kubeconfig(kubeconfig))
    }

    /// A source reading the kubeconfig file at `path` on every session build.
    pub fn from_file(path: impl Into<PathBuf>) -> Self {
        Self::with_origin(Origin::File(path.into()))
    }

    fn with_origin(origin: Origin) -> Self {
        Self {
            origin,
            contexts: HashMap::new(),
            strict: false,
            expires_at: None,
        }
    }

    /// Serve `key` from the context named `context`.
    #[must_use]
    pub fn with_context(mut self, key: SessionKey, context: impl Into<String>) -> Self {
        self.contexts.insert(key, context.into());
        self
    }

    /// Refuse keys not routed with [`with_context`](Self::with_context)
    /// ([`CredentialsError::UnknownCluster`]) instead of serving the current context.
    #[must_use]
    pub fn strict(mut self) -> Self {
        self.strict = true;
        self
    }

    /// The material expires at `at` (clamps every session's TTL, K3).
    #[must_use]
    pub fn with_expiry(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    async fn load(&self) -> Result<Kubeconfig, CredentialsError> {
        match &self.origin {
            Origin::Memory(kubeconfig) => Ok((**kubeconfig).clone()),
            Origin::File(path) => {
                let read_error = |source| CredentialsError::ReadFile {
                    path: path.clone(),
                    source,
                };
                let bytes = crate::pool::read_limited(path, MAX_KUBECONFIG_BYTES)
                    .await
                    .map_err(read_error)?;
                let text = decode_text(bytes).map_err(read_error)?;
                let mut kubeconfig = parse(&text)?;
                if let Some(dir) = path.parent() {
                    resolve_relative_paths(&mut kubeconfig, dir);
                }
                Ok(kubeconfig)
            }
        }
    }
}

/// The most a kubeconfig file may hold (one with many clusters and inline certificates is a
/// few hundred KiB; `/dev/zero` must not fill the memory).
const MAX_KUBECONFIG_BYTES: u64 = 16 << 20;

/// A kubeconfig file's text, read as kube's `Kubeconfig::read_from` reads it: UTF-8, with or
/// without a byte-order mark, or UTF-16 (little or big endian) after its byte-order mark, as
/// Windows PowerShell writes files. Anything else is an `InvalidData` error (kube would panic
/// on UTF-16 of an odd length).
fn decode_text(bytes: Vec<u8>) -> std::io::Result<String> {
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let utf16 = |body: &[u8], unit: fn([u8; 2]) -> u16| {
        let pairs = body.chunks_exact(2);
        if !pairs.remainder().is_empty() {
            return Err(invalid("the file is UTF-16 of an odd length"));
        }
        let units: Vec<u16> = pairs.map(|pair| unit([pair[0], pair[1]])).collect();
        String::from_utf16(&units).map_err(|_| invalid("the file is not valid UTF-16"))
    };
    match bytes.as_slice() {
        [0xFF, 0xFE, body @ ..] => utf16(body, u16::from_le_bytes),
        [0xFE, 0xFF, body @ ..] => utf16(body, u16::from_be_bytes),
        [0xEF, 0xBB, 0xBF, body @ ..] => {
            String::from_utf8(body.to_vec()).map_err(|_| invalid("the file is not UTF-8"))
        }
        _ => String::from_utf8(bytes).map_err(|_| invalid("the file is not UTF-8")),
    }
}

/// `text` parsed, or an error that says where it failed but quotes none of it.
fn parse(text: &str) -> Result<Kubeconfig, CredentialsError> {
    Kubeconfig::from_yaml(text).map_err(|e| CredentialsError::ParseKubeconfig(e.into()))
}

/// The files a kubeconfig file names by relative path (the CA, the client certificate and key,
/// the token file) are relative to its directory, as kubectl and kube's `Kubeconfig::read_from`
/// read them, not to the process's working directory. Exec commands are left alone: they are
/// never run.
fn resolve_relative_paths(kubeconfig: &mut Kubeconfig, dir: &Path) {
    let absolute = |file: &mut Option<String>| {
        if let Some(name) = file.as_deref()
            && Path::new(name).is_relative()
            && let Some(joined) = dir.join(name).to_str()
        {
            *file = Some(joined.to_owned());
        }
    };
    for named in &mut kubeconfig.clusters {
        if let Some(cluster) = &mut named.cluster {
            absolute(&mut cluster.certificate_authority);
        }
    }
    for named in &mut kubeconfig.auth_infos {
        if let Some(user) = &mut named.auth_info {
            absolute(&mut user.client_certificate);
            absolute(&mut user.client_key);
            absolute(&mut user.token_file);
        }
    }
}

#[async_trait::async_trait]
impl ClusterCredentials for KubeconfigSource {
    async fn credentials(&self, key: &SessionKey) -> Result<ClusterMaterial, CredentialsError> {
        let context = self.contexts.get(key).cloned();
        if context.is_none() && self.strict {
            return Err(CredentialsError::UnknownCluster { key: key.clone() });
        }
        let mut material = ClusterMaterial::new(self.load().await?);
        if let Some(context) = context {
            material = material.with_context(context);
        }
        if let Some(at) = self.expires_at {
            material = material.with_expiry(at);
        }
        Ok(material)
    }
}

impl fmt::Debug for KubeconfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("KubeconfigSource");
        match &self.origin {
            Origin::Memory(_) => debug.field("origin", &"in-memory"),
            Origin::File(path) => debug.field("origin", path),
        };
        debug
            .field("routed_keys", &self.contexts.len())
            .field("strict", &self.strict)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::decode_text;

    // Read as kube reads a kubeconfig file: UTF-8 with or without its mark, UTF-16 after its
    // mark; odd-length or invalid UTF-16 and invalid UTF-8 are errors, not panics.
    #[test]
    fn kubeconfig_text_is_utf8_or_marked_utf16() {
        let text = "apiVersion: v1\nkind: Config\n";
        assert_eq!(decode_text(text.into()).unwrap(), text);
        let marked = [b"\xEF\xBB\xBF".as_slice(), text.as_bytes()].concat();
        assert_eq!(decode_text(marked).unwrap(), text);
        let units: Vec<u16> = text.encode_utf16().collect();
        let le: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain(units.iter().flat_map(|u| u.to_le_bytes()))
            .collect();
        let be: Vec<u8> = [0xFE, 0xFF]
            .into_iter()
            .chain(units.iter().flat_map(|u| u.to_be_bytes()))
            .collect();
        assert_eq!(decode_text(le.clone()).unwrap(), text);
        assert_eq!(decode_text(be).unwrap(), text);
        let odd = [le.as_slice(), b"x".as_slice()].concat();
        let lone_surrogate = vec![0xFF, 0xFE, 0x00, 0xD8];
        for bad in [
            odd,
            lone_surrogate,
            vec![0xC3, 0x28],
            vec![0xEF, 0xBB, 0xBF, 0xFF],
        ] {
            let error = decode_text(bad).unwrap_err();
            assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        }
    }
}
