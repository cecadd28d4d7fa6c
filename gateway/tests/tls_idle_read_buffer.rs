//! A TLS connection that is waiting for its peer holds no read buffer (vendor/rustls.patch.md).
//! rustls 0.23 kept a 4 KiB buffer for the next record on every connection, also while the peer
//! sent nothing: for a realtime server, whose connections mostly wait, 4 KiB each. Nor does it
//! keep room for handshake messages past its handshake (640 bytes). A test binary of its own:
//! it counts the process's live heap with a global allocator.

use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

mod support;
use support::counting_alloc::{ALLOCATIONS, LIVE};

/// A socket with nothing to read yet, as a non-blocking one is while its peer is quiet.
struct Quiet;

impl Read for Quiet {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

/// Move every pending TLS record from one side to the other until neither has any left.
fn exchange(client: &mut ClientConnection, server: &mut ServerConnection) {
    loop {
        let mut wire = Vec::new();
        let mut moved = false;
        while client.wants_write() {
            client.write_tls(&mut wire).expect("client writes");
        }
        if !wire.is_empty() {
            moved = true;
            let mut rd = &wire[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).expect("server reads");
                server.process_new_packets().expect("server accepts");
            }
        }
        wire.clear();
        while server.wants_write() {
            server.write_tls(&mut wire).expect("server writes");
        }
        if !wire.is_empty() {
            moved = true;
            let mut rd = &wire[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).expect("client reads");
                client.process_new_packets().expect("client accepts");
            }
        }
        if !moved {
            return;
        }
    }
}

/// The client sends `message`; the server reads it whole.
fn say(client: &mut ClientConnection, server: &mut ServerConnection, message: &[u8; 5]) {
    io::Write::write_all(&mut client.writer(), message).expect("written");
    exchange(client, server);
    let mut got = [0u8; 5];
    server.reader().read_exact(&mut got).expect("plaintext");
    assert_eq!(&got, message);
}

/// The heap counters are the process's: one test at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A client and a server connection, in memory, past their handshake.
fn handshaken() -> (ClientConnection, ServerConnection) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let der = CertificateDer::from(cert.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let server_config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .expect("server config");
    let mut roots = RootCertStore::empty();
    roots.add(der).expect("root");
    let client_config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut server = ServerConnection::new(Arc::new(server_config)).expect("server");
    let mut client = ClientConnection::new(
        Arc::new(client_config),
        ServerName::try_from("localhost").expect("name"),
    )
    .expect("client");
    exchange(&mut client, &mut server);
    assert!(!server.is_handshaking() && !client.is_handshaking());
    (client, server)
}

#[test]
fn a_connection_waiting_for_its_peer_holds_no_read_buffer() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (mut client, mut server) = handshaken();

    // A first message, read and taken: the server's read buffer held it.
    say(&mut client, &mut server, b"hello");

    // Then the client is quiet: the server looks for more, as tokio-rustls does on every poll.
    let before = LIVE.load(Ordering::SeqCst);
    let quiet = server.read_tls(&mut Quiet).expect_err("nothing to read");
    let after = LIVE.load(Ordering::SeqCst);
    assert_eq!(quiet.kind(), io::ErrorKind::WouldBlock);
    // (What it held is the record it read, no more: see the test below.)
    assert!(
        before > after,
        "a waiting connection kept its read buffer (live heap {before} -> {after})"
    );

    // Looking again while the client is still quiet (a task polls its quiet side at every
    // wake-up) allocates nothing.
    let allocations = ALLOCATIONS.load(Ordering::SeqCst);
    let quiet = server.read_tls(&mut Quiet).expect_err("nothing to read");
    assert_eq!(quiet.kind(), io::ErrorKind::WouldBlock);
    assert_eq!(
        ALLOCATIONS.load(Ordering::SeqCst),
        allocations,
        "a quiet read allocated"
    );
    assert_eq!(LIVE.load(Ordering::SeqCst), after);

    // And it reads on when the client speaks again.
    say(&mut client, &mut server, b"again");
}

/// A record that arrives while no other is pending is kept in a buffer its own size: rustls
/// sized the buffer to 4 KiB (zero-filled) for every read, and with the buffer given back at
/// every quiet read (above) a keep-alive connection paid that for each request's record.
#[test]
fn a_record_is_read_into_a_buffer_its_own_size() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (mut client, mut server) = handshaken();
    say(&mut client, &mut server, b"hello");
    let _ = server.read_tls(&mut Quiet);

    io::Write::write_all(&mut client.writer(), b"again").expect("written");
    let mut wire = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut wire).expect("client writes");
    }
    let before = LIVE.load(Ordering::SeqCst);
    let mut rd = &wire[..];
    let read = server.read_tls(&mut rd).expect("server reads");
    let grew = LIVE.load(Ordering::SeqCst) - before;
    assert_eq!(read, wire.len(), "the whole record is read at once");
    assert!(
        grew <= wire.len() as isize,
        "reading a {}-byte record took {grew} bytes of heap",
        wire.len()
    );
    server.process_new_packets().expect("server accepts");
    let mut got = [0u8; 5];
    server.reader().read_exact(&mut got).expect("plaintext");
    assert_eq!(&got, b"again");
}

/// What a server connection past its handshake holds, in bytes of live heap: freed when it
/// is dropped.
fn held_by(server: ServerConnection) -> isize {
    let before = LIVE.load(Ordering::SeqCst);
    drop(server);
    before - LIVE.load(Ordering::SeqCst)
}

/// rustls reserves room for 16 handshake messages (640 bytes) when a connection is made and
/// kept it for the connection's life, though past the handshake such messages are rare (a key
/// update, a ticket): vendor/rustls.patch.md. A server connection past its handshake held
/// 2,185 bytes with it (this test's build), 1,545 without: its keys (an AEAD state each way),
/// its state machine and its buffers' bookkeeping.
#[test]
fn a_connection_past_its_handshake_keeps_no_room_for_handshake_messages() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (mut client, mut server) = handshaken();
    say(&mut client, &mut server, b"hello");

    // A handshake message past the handshake (the client updates its keys) is still read,
    // and what it needed is given back after it.
    client.refresh_traffic_keys().expect("key update");
    say(&mut client, &mut server, b"again");

    let _ = server.read_tls(&mut Quiet);
    let held = held_by(server);
    assert!(
        held <= 1600,
        "a quiet server connection past its handshake holds {held} bytes"
    );
}
