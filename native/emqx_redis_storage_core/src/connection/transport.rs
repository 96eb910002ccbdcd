//! How our connections are opened: TCP, or TLS with rustls settings of our
//! own. Owning the TLS handshake lets the certificate be checked against a
//! name other than the address dialled (`ssl.server_name_indication`), which
//! redis-rs cannot do. The redis-rs cluster client still opens its node
//! connections itself (see `cluster::connect_cluster`).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

use crate::config::{address, is_unix, ServerNameCheck, Tls};
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// A connected byte stream, plain or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub struct Transport {
    tls: Option<(TlsConnector, Option<ServerName<'static>>)>,
    /// The client's: its connections count their bytes and themselves here.
    metrics: Arc<Metrics>,
}

impl Transport {
    /// Checks the PEM contents and the name now: a bad one is a config error
    /// at start, not a connection error later.
    pub fn new(tls: Option<&Tls>, metrics: Arc<Metrics>) -> Result<Transport> {
        let tls = match tls {
            None => None,
            Some(tls) => {
                let name = match &tls.server_name {
                    ServerNameCheck::Name(name) => {
                        Some(ServerName::try_from(name.clone()).map_err(|_| {
                            invalid("redis.ssl.server_name_indication", "a DNS name or disable")
                        })?)
                    }
                    ServerNameCheck::Host | ServerNameCheck::Disable => None,
                };
                Some((TlsConnector::from(Arc::new(rustls_config(tls)?)), name))
            }
        };
        Ok(Transport { tls, metrics })
    }

    /// The client's counters, which its connections add to.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A stream to `host:port` (or the unix socket at the path `host`),
    /// and whether it is still open. The caller bounds the time it may take.
    pub async fn open(
        &self,
        host: &str,
        port: u16,
    ) -> redis::RedisResult<(Box<dyn Stream>, Alive)> {
        let alive = Alive::new(address(host, port));
        if is_unix(host) {
            let unix = UnixStream::connect(host).await?;
            return self.secured(unix, host, alive).await;
        }
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        self.secured(tcp, host, alive).await
    }

    /// `stream` as is, or after a TLS handshake when TLS is on.
    async fn secured<S: Stream + 'static>(
        &self,
        stream: S,
        host: &str,
        alive: Alive,
    ) -> redis::RedisResult<(Box<dyn Stream>, Alive)> {
        let Some((connector, name)) = &self.tls else {
            let stream = Watched::new(stream, alive.clone(), self.metrics.clone());
            return Ok((Box::new(stream), alive));
        };
        let name = match name {
            Some(name) => name.clone(),
            None => ServerName::try_from(host.to_string()).map_err(|_| {
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "not a valid TLS server name",
                    host.to_string(),
                ))
            })?,
        };
        let tls = connector.connect(name, stream).await.inspect_err(|e| {
            tracing::warn!(server = %alive.server(), reason = %e, "tls_handshake_failed");
        })?;
        let stream = Watched::new(tls, alive.clone(), self.metrics.clone());
        Ok((Box::new(stream), alive))
    }
}

/// False once the stream has met its end: end of file, or an error on a
/// read or a write. A request is never handed to a connection whose stream
/// is known to be closed, so a request given to a closed one provably never
/// reached Redis and may be sent again on a new connection.
#[derive(Clone, Debug)]
pub struct Alive(Arc<(AtomicBool, String)>);

impl Alive {
    /// An open stream to `server` (`host:port`).
    fn new(server: String) -> Self {
        Alive(Arc::new((AtomicBool::new(true), server)))
    }

    pub fn is_open(&self) -> bool {
        self.0 .0.load(Ordering::Acquire)
    }

    pub fn server(&self) -> &str {
        &self.0 .1
    }

    /// True the first time only.
    pub(super) fn end(&self) -> bool {
        self.0 .0.swap(false, Ordering::AcqRel)
    }

    /// The stream ended without our asking: logged where the end is seen
    /// first, at that moment, and once.
    pub(super) fn lost(&self, reason: &dyn std::fmt::Display) {
        if self.end() {
            tracing::warn!(server = %self.server(), reason = %reason, "connection_lost");
        }
    }

    /// Notes the end of the stream if `polled` shows it.
    fn watch<T>(
        &self,
        polled: Poll<io::Result<T>>,
        end: impl Fn(&T) -> bool,
    ) -> Poll<io::Result<T>> {
        match &polled {
            Poll::Ready(Err(e)) => self.lost(e),
            Poll::Ready(Ok(done)) if end(done) => self.lost(&"closed by the server"),
            _ => {}
        }
        polled
    }
}

/// A stream that counts its bytes, and the connection itself while it
/// exists, and notes its end in its `Alive`.
struct Watched<S> {
    inner: S,
    alive: Alive,
    metrics: Arc<Metrics>,
}

impl<S> Watched<S> {
    fn new(inner: S, alive: Alive, metrics: Arc<Metrics>) -> Self {
        metrics.connections.open.fetch_add(1, Ordering::Relaxed);
        Watched {
            inner,
            alive,
            metrics,
        }
    }

    /// Adds the bytes a successful read or write moved to `counter`.
    fn count<T>(polled: &Poll<io::Result<T>>, counter: &AtomicU64, bytes: impl Fn(&T) -> usize) {
        if let Poll::Ready(Ok(done)) = polled {
            counter.fetch_add(bytes(done) as u64, Ordering::Relaxed);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let wanted = buf.remaining() > 0;
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        Self::count(&polled, &self.metrics.connections.bytes_received, |_| read);
        // Nothing read into room for something: the end of the stream.
        let eof = wanted && read == 0;
        self.alive.watch(polled, |_| eof)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        Self::count(&polled, &self.metrics.connections.bytes_sent, |n| *n);
        self.alive.watch(polled, |n| *n == 0 && !buf.is_empty())
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        Self::count(&polled, &self.metrics.connections.bytes_sent, |n| *n);
        self.alive
            .watch(polled, |n| *n == 0 && bufs.iter().any(|b| !b.is_empty()))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        self.alive.watch(flushed, |_| false)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.alive.end();
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S> Drop for Watched<S> {
    fn drop(&mut self) {
        self.metrics
            .connections
            .open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// `field`: the dotted config path, e.g. `redis.ssl.cacertfile`.
fn invalid(field: &'static str, expected: &str) -> Error {
    Error::InvalidConfig(field, expected.to_string())
}

fn certificates(pem: &[u8], field: &'static str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| invalid(field, "PEM certificates"))?;
    if certs.is_empty() {
        return Err(invalid(field, "PEM certificates (none found)"));
    }
    Ok(certs)
}

fn rustls_config(tls: &Tls) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let chain = if tls.verify {
        Some(chain_verifier(tls, provider)?)
    } else {
        None
    };
    let builder = match (chain, &tls.server_name) {
        (Some(chain), ServerNameCheck::Host | ServerNameCheck::Name(_)) => {
            builder.with_webpki_verifier(chain)
        }
        (chain, _) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Lenient { chain, algorithms })),
    };
    let mut config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|_| invalid("redis.ssl.keyfile", "a PEM private key"))?;
            builder
                .with_client_auth_cert(certificates(cert, "redis.ssl.certfile")?, key)
                .map_err(|e| invalid("redis.ssl.keyfile", &format!("the key of certfile: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.enable_sni = !matches!(tls.server_name, ServerNameCheck::Disable);
    Ok(config)
}

/// Checks certificate chains against `cacertfile`, or the system's roots.
fn chain_verifier(tls: &Tls, provider: Arc<CryptoProvider>) -> Result<Arc<WebPkiServerVerifier>> {
    let mut roots = RootCertStore::empty();
    match &tls.ca {
        Some(pem) => {
            for cert in certificates(pem, "redis.ssl.cacertfile")? {
                roots.add(cert).map_err(|e| {
                    invalid("redis.ssl.cacertfile", &format!("CA certificates: {e}"))
                })?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // A system root rustls cannot use is skipped, as browsers do.
                let _ = roots.add(cert);
            }
        }
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| invalid("redis.ssl.cacertfile", &format!("CA certificates: {e}")))
}

/// Checks less than rustls does by default, on request: with `verify_none`
/// nothing of the certificate (`chain` is None); with
/// `server_name_indication => disable` its chain but not its name. The
/// handshake signatures are always checked.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Arc<Metrics> {
        Arc::new(Metrics::new(std::time::Duration::from_secs(1)))
    }

    /// Every byte passes, in order, both ways, and is counted, and so is
    /// the connection while it exists.
    #[test]
    fn watched_passes_and_counts_every_byte() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (near, mut far) = tokio::io::duplex(1 << 16);
            let alive = Alive::new("test".into());
            let metrics = metrics();
            let mut near = Watched::new(near, alive.clone(), metrics.clone());
            let mut sent = Vec::new();
            for i in 0..1000u32 {
                let chunk = i.to_be_bytes();
                near.write_all(&chunk).await.unwrap();
                near.flush().await.unwrap();
                sent.extend_from_slice(&chunk);
            }
            let mut got = vec![0; sent.len()];
            far.read_exact(&mut got).await.unwrap();
            assert_eq!(got, sent);
            far.write_all(b"reply").await.unwrap();
            let mut reply = [0; 5];
            near.read_exact(&mut reply).await.unwrap();
            assert_eq!(&reply, b"reply");
            assert!(alive.is_open());
            let counted = metrics.snapshot();
            assert_eq!(counted.bytes_sent, sent.len() as u64);
            assert_eq!(counted.bytes_received, 5);
            assert_eq!(counted.connections_open, 1);
            drop(near);
            assert_eq!(metrics.snapshot().connections_open, 0);
        });
    }

    /// The far end closing is seen by the next read: the stream is known closed.
    #[test]
    fn end_of_stream_is_noticed() {
        use tokio::io::AsyncReadExt;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (near, far) = tokio::io::duplex(64);
            let alive = Alive::new("test".into());
            let mut near = Watched::new(near, alive.clone(), metrics());
            drop(far);
            let mut buf = [0; 8];
            assert_eq!(near.read(&mut buf).await.unwrap(), 0);
            assert!(!alive.is_open());
        });
    }

    fn tls(server_name: ServerNameCheck) -> Tls {
        Tls {
            server_name,
            verify: true,
            ..Tls::default()
        }
    }

    #[test]
    fn bad_names_and_pem_are_config_errors() {
        let err = |t: &Tls| {
            Transport::new(Some(t), metrics())
                .err()
                .map(|e| e.to_string())
        };
        assert!(err(&tls(ServerNameCheck::Name("not a name!".into())))
            .unwrap()
            .contains("redis.ssl.server_name_indication"));
        let mut bad_ca = tls(ServerNameCheck::Host);
        bad_ca.ca = Some(b"not PEM".to_vec());
        assert!(err(&bad_ca).unwrap().contains("redis.ssl.cacertfile"));
        let mut bad_key = tls(ServerNameCheck::Host);
        bad_key.cert = Some(b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".to_vec());
        bad_key.key = Some(b"nothing".to_vec());
        assert!(err(&bad_key).unwrap().contains("redis.ssl."));
        assert!(Transport::new(
            Some(&tls(ServerNameCheck::Name("redis.test".into()))),
            metrics()
        )
        .is_ok());
        assert!(Transport::new(Some(&tls(ServerNameCheck::Disable)), metrics()).is_ok());
    }
}
