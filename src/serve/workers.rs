//! Thread-per-core serving: one acceptor hands each new connection, round-robin, to one of N
//! threads, each running its own single-threaded Tokio runtime with the same router. A request
//! is then read, decided and answered on one thread: no work stealing, no cross-thread wake-ups
//! on the hot path (on a 2-core machine they were a large share of the cost of a decision).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::serve::Listener;
use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// The connections handed to one serving thread, as an axum listener.
struct HandedOver {
    connections: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    local: SocketAddr,
}

impl Listener for HandedOver {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            let Some((stream, peer)) = self.connections.recv().await else {
                // The acceptor has stopped: graceful shutdown ends this server.
                return std::future::pending().await;
            };
            // Registers the socket with this thread's runtime.
            match TcpStream::from_std(stream) {
                Ok(stream) => return (stream, peer),
                Err(e) => tracing::warn!("connection from {peer} dropped: {e}"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Serves `router` on `threads` serving threads until `shutdown` completes, then lets each
/// finish its in-flight requests. The acceptor runs in the calling task.
pub async fn serve_on_threads(
    listener: TcpListener,
    router: Router,
    threads: usize,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let mut queues = Vec::with_capacity(threads);
    let mut servers = Vec::with_capacity(threads);
    for i in 0..threads.max(1) {
        let (queue, connections) = mpsc::unbounded_channel();
        let listener = HandedOver { connections, local };
        let router = router.clone();
        let mut stopped = stopped.clone();
        let server = std::thread::Builder::new()
            .name(format!("serve-{i}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    axum::serve(listener, router)
                        .with_graceful_shutdown(async move {
                            let _ = stopped.wait_for(|stop| *stop).await;
                        })
                        .await
                })
            })?;
        queues.push(queue);
        servers.push(server);
    }
    tokio::pin!(shutdown);
    let mut next = 0;
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Responses are single writes; never hold one back for an ACK.
                let handed = stream.set_nodelay(true).and_then(|()| stream.into_std());
                match handed {
                    Ok(stream) => {
                        if queues[next].send((stream, peer)).is_err() {
                            break; // that server thread has failed; its join reports why
                        }
                        next = (next + 1) % queues.len();
                    }
                    Err(e) => tracing::warn!("connection from {peer} dropped: {e}"),
                }
            }
            // Out of file descriptors and the like: wait instead of spinning (as axum does).
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(queues);
    let _ = stop.send(true);
    let joined = tokio::task::spawn_blocking(move || {
        servers
            .into_iter()
            .map(|server| {
                server
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("a serving thread panicked")))
            })
            .collect::<io::Result<Vec<()>>>()
    })
    .await
    .map_err(io::Error::other)?;
    joined.map(|_| ())
}
