//! A pooled app connection is taken for the next request without a system call to check its
//! peer (the pingora-core patch of vendor/reuse-peer-check.patch.md).
//!
//! pingora checks that an idle connection it takes from its keep-alive pool is still connected
//! to the peer it is filed under. It asked the kernel (`getpeername`) every time: one system call
//! per proxied request, about a fifth of the gateway's on a small keep-alive request. The
//! patched connector compares the address the connection's socket digest recorded (asked once
//! in the connection's life). The tests refuse `getpeername` to their thread with a seccomp
//! filter once that address is known: the connection must still be reused, and a connection
//! the app reset must still be refused.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::net::SocketAddr;
use std::time::Duration;

use pingora::connectors::TransportConnector;
use pingora::protocols::Stream;
use pingora::upstreams::peer::{BasicPeer, Peer};
use tokio::net::{TcpListener, TcpStream};

/// From here on, `getpeername` fails with `EPERM` on the calling thread (and only on it: the
/// filter is installed without `SECCOMP_FILTER_FLAG_TSYNC`).
fn refuse_getpeername_on_this_thread() {
    use libc::{sock_filter, sock_fprog, BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    let stmt = |code: u32, k: u32| sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |k: u32, jt: u8, jf: u8| sock_filter {
        code: (BPF_JMP | BPF_JEQ | BPF_K) as u16,
        jt,
        jf,
        k,
    };
    // struct seccomp_data: the system call's number at offset 0, the architecture at 4.
    let filter = [
        stmt(BPF_LD | BPF_W | BPF_ABS, 4),
        jump(AUDIT_ARCH_X86_64, 0, 2),
        stmt(BPF_LD | BPF_W | BPF_ABS, 0),
        jump(libc::SYS_getpeername as u32, 1, 0),
        stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        stmt(
            BPF_RET | BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
    ];
    let program = sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut sock_filter,
    };
    // SAFETY: plain prctl calls; `program` and `filter` outlive them (the kernel copies the
    // filter).
    unsafe {
        assert_eq!(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            0,
            "no_new_privs"
        );
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &program as *const sock_fprog,
            ),
            0,
            "seccomp filter: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Whether `getpeername` on `stream` works on this thread.
fn getpeername_works(stream: &Stream) -> bool {
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `addr` and `len` are valid for the call; the descriptor is the stream's.
    let rc = unsafe {
        libc::getpeername(
            stream.id(),
            &mut addr as *mut _ as *mut libc::sockaddr,
            &mut len,
        )
    };
    rc == 0
}

/// `SO_LINGER` with a zero timeout: closing `conn` resets the connection.
fn reset_on_close(conn: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is valid for the call; the descriptor is the stream's.
    let rc = unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

/// Runs `test` on a thread of its own (the seccomp filter dies with it) in a current-thread
/// runtime, the gateway's shape.
fn on_a_thread_of_its_own<F>(test: impl FnOnce() -> F + Send + 'static)
where
    F: std::future::Future<Output = ()>,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(test())
    })
    .join()
    .expect("the test thread panicked");
}

/// An app that accepts connections and keeps them until told to reset them.
async fn app() -> (SocketAddr, tokio::sync::mpsc::Receiver<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            if tx.send(conn).await.is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

/// A new connection to the app, its address looked up once (as the gateway's log and
/// forwarding headers do), then put in the pool: its descriptor, and the app's end of it.
async fn one_pooled_connection(
    connector: &TransportConnector,
    peer: &BasicPeer,
    addr: SocketAddr,
    accepted: &mut tokio::sync::mpsc::Receiver<TcpStream>,
) -> (i32, TcpStream) {
    let (stream, reused) = connector.get_stream(peer).await.expect("connect");
    assert!(!reused);
    let app_side = accepted.recv().await.expect("accepted");
    let id = stream.id();
    let digest = stream.get_socket_digest().expect("a socket digest");
    assert_eq!(digest.peer_addr().and_then(|a| a.as_inet()), Some(&addr));
    connector.release_stream(stream, peer.reuse_hash(), None);
    (id, app_side)
}

#[test]
fn a_pooled_connection_is_reused_without_asking_the_kernel_for_its_peer() {
    on_a_thread_of_its_own(|| async {
        let (addr, mut accepted) = app().await;
        let connector = TransportConnector::new(None);
        let peer = BasicPeer::new(&addr.to_string());
        let (id, _app_side) = one_pooled_connection(&connector, &peer, addr, &mut accepted).await;

        refuse_getpeername_on_this_thread();
        for round in 0..3 {
            let stream = connector
                .reused_stream(&peer)
                .await
                .unwrap_or_else(|| panic!("round {round}: the pooled connection was not reused"));
            assert_eq!(stream.id(), id, "round {round}: another connection");
            assert!(
                !getpeername_works(&stream),
                "the filter refuses getpeername on this thread"
            );
            connector.release_stream(stream, peer.reuse_hash(), None);
        }
    });
}

#[test]
fn a_pooled_connection_the_app_reset_is_not_reused() {
    on_a_thread_of_its_own(|| async {
        let (addr, mut accepted) = app().await;
        let connector = TransportConnector::new(None);
        let peer = BasicPeer::new(&addr.to_string());

        let (_, app_side) = one_pooled_connection(&connector, &peer, addr, &mut accepted).await;

        refuse_getpeername_on_this_thread();
        // The app resets the idle connection (SO_LINGER 0, then close).
        reset_on_close(&app_side);
        drop(app_side);
        // Let the runtime's driver see the reset.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            connector.reused_stream(&peer).await.is_none(),
            "a reset connection was handed out for a request"
        );

        // A new connection still works.
        let (fresh, reused) = connector.get_stream(&peer).await.expect("connect again");
        assert!(!reused);
        drop(fresh);
    });
}
