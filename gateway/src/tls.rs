//! TLS: certificate chains chosen by SNI, and a development certificate when none is configured.
//!
//! Every file is parsed here before pingora sees anything: pingora's `TlsSettings::build()`
//! panics on a bad file, and a front door must fail with a sentence, not a backtrace.

use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key found (PKCS#8, PKCS#1 or SEC1 expected)")]
    NoKey { path: PathBuf },
    #[error("{path}: not valid PEM: {source}")]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{key} does not fit {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("cannot create the development certificate in {dir}: {reason}")]
    DevCert { dir: PathBuf, reason: String },
}

/// Parse a certificate chain and its private key, and check that they belong together.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Pem {
            path: cert.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let private = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(k) => k,
        Err(pem::Error::NoItemsFound) => {
            return Err(TlsError::NoKey {
                path: key.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(TlsError::Pem {
                path: key.to_path_buf(),
                source,
            })
        }
    };
    CertifiedKey::from_der(chain, private, &default_provider()).map_err(|e| TlsError::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        reason: e.to_string(),
    })
}

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
    pub fn from_config(config: &Config) -> Result<SniResolver, TlsError> {
        if config.tls.certificates.is_empty() {
            let (key, path) = dev_certificate(&config.state_dir())?;
            tracing::info!(cert = %path.display(), "no certificate configured: using the development certificate");
            return Ok(SniResolver {
                default: Arc::new(key),
                exact: HashMap::new(),
                wildcard: HashMap::new(),
            });
        }
        let mut resolver: Option<SniResolver> = None;
        for c in &config.tls.certificates {
            let key = Arc::new(load_pair(&c.cert, &c.key)?);
            let r = resolver.get_or_insert_with(|| SniResolver {
                default: key.clone(),
                exact: HashMap::new(),
                wildcard: HashMap::new(),
            });
            for name in &c.server_names {
                let name = name.to_ascii_lowercase();
                match name.strip_prefix("*.") {
                    Some(parent) => r.wildcard.insert(parent.to_string(), key.clone()),
                    None => r.exact.insert(name, key.clone()),
                };
            }
        }
        resolver.ok_or_else(|| TlsError::NoCertificate {
            path: PathBuf::from("tls.certificates"),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

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
