//! TLS: certificate chains chosen by SNI, and a development certificate when none is configured.
//!
//! Configured chains arrive loaded and checked (see [`crate::settings::certs`]): pingora's
//! `TlsSettings::build()` panics on a bad file, so pingora never reads one.

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::settings::certs::{load_pair, TlsError};
use crate::settings::{ServerName, Tls};

/// Create (once) and load the development certificate for `localhost` / `127.0.0.1` / `::1`.
/// It is reused on later starts so a browser exception granted once keeps working.
pub fn dev_certificate(state_dir: &Path) -> Result<(CertifiedKey, PathBuf), TlsError> {
    let cert = state_dir.join("dev-cert.pem");
    let key = state_dir.join("dev-key.pem");
    if !(cert.is_file() && key.is_file()) {
        let fail = |reason: String| TlsError::DevCert {
            dir: state_dir.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(state_dir).map_err(|e| fail(e.to_string()))?;
        let names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        let generated =
            rcgen::generate_simple_self_signed(names).map_err(|e| fail(e.to_string()))?;
        write_private(&key, generated.signing_key.serialize_pem().as_bytes())
            .map_err(|e| fail(e.to_string()))?;
        std::fs::write(&cert, generated.cert.pem()).map_err(|e| fail(e.to_string()))?;
        tracing::info!(cert = %cert.display(), "generated a development certificate");
    }
    Ok((load_pair(&cert, &key)?, cert))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(bytes)
}

/// Picks a chain by SNI: exact name first, then `*.parent`, then the default (the first
/// configured chain), so a client without SNI or with an unknown name still gets an answer.
#[derive(Debug)]
pub struct SniResolver {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl SniResolver {
    pub fn new(tls: &Tls) -> Result<SniResolver, TlsError> {
        let Some(first) = tls.certificates.first() else {
            let (key, path) = dev_certificate(&tls.state_dir)?;
            tracing::info!(cert = %path.display(), "no certificate configured: using the development certificate");
            return Ok(SniResolver {
                default: Arc::new(key),
                exact: HashMap::new(),
                wildcard: HashMap::new(),
            });
        };
        let mut r = SniResolver {
            default: first.key.clone(),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for c in &tls.certificates {
            for name in &c.server_names {
                match name {
                    ServerName::Wildcard(parent) => {
                        r.wildcard.insert(parent.clone(), c.key.clone())
                    }
                    ServerName::Exact(name) => r.exact.insert(name.clone(), c.key.clone()),
                };
            }
        }
        Ok(r)
    }

    fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        if let Some(k) = self.exact.get(&name) {
            return k.clone();
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.wildcard.get(parent) {
                return k.clone();
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// The certificates in force: what the TLS listener asks on every handshake, swapped whole by
/// a reload (the files are read again, so a renewed certificate is served to the next
/// handshake; connections already up keep the one they were made with).
#[derive(Debug)]
pub struct Certificates(arc_swap::ArcSwap<SniResolver>);

impl Certificates {
    pub fn new(tls: &Tls) -> Result<Certificates, TlsError> {
        Ok(Certificates(arc_swap::ArcSwap::from_pointee(
            SniResolver::new(tls)?,
        )))
    }

    /// Serve `resolver`'s certificates from the next handshake on.
    pub fn set(&self, resolver: SniResolver) {
        self.0.store(Arc::new(resolver));
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().pick(hello.server_name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What every TLS connection carries for as long as it lives (vendor/tls-stream.patch.md):
    /// pingora 0.9.1's stream kept its accept and connect futures inline, each the size of a
    /// whole TLS stream, so a server connection held two empty stream-sized slots.
    #[test]
    fn a_tls_stream_does_not_keep_room_for_its_handshakes() {
        use pingora::protocols::l4::stream::Stream;
        let tls = std::mem::size_of::<pingora::protocols::tls::TlsStream<Stream>>();
        let rustls = std::mem::size_of::<tokio_rustls::server::TlsStream<Stream>>();
        eprintln!("pingora TlsStream {tls} B, tokio-rustls server stream {rustls} B");
        assert!(tls < rustls + 512, "{tls} B for a {rustls} B stream");
    }

    #[test]
    fn dev_certificate_is_created_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("gw-devcert-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (_, path) = dev_certificate(&dir).expect("created");
        let first = std::fs::read(&path).expect("written");
        dev_certificate(&dir).expect("reused");
        assert_eq!(first, std::fs::read(&path).expect("still there"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_files_are_errors_not_panics() {
        let dir = std::env::temp_dir().join(format!("gw-badcert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "hello").expect("write");
        let e = load_pair(&junk, &junk).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = load_pair(&dir.join("missing.pem"), &junk)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read"), "{e}");
        // A real chain with someone else's key.
        let (_, cert) = dev_certificate(&dir.join("a")).expect("a");
        dev_certificate(&dir.join("b")).expect("b");
        let e = load_pair(&cert, &dir.join("b/dev-key.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not fit"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
