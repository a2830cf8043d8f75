//! The TCP proxy every faulty link runs through: it listens on 127.0.0.2 at the port of
//! the process it fronts (on 127.0.0.1), forwards bytes both ways, and misbehaves when told.
//!
//! A link is one proxy, so a fault hits every connection on it: the coordinator's calls to
//! a participant and the initiators' Trys share the participant's proxy; initiators reach
//! each coordinator through its own. It knows nothing of gRPC: faults are on bytes and
//! connections, as a network's are.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// How a link treats its traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bytes go through.
    Pass,
    /// Every chunk is held this long before it is forwarded.
    Delay(Duration),
    /// New connections are closed at once; open ones were closed when the mode was set.
    Drop,
    /// Bytes are swallowed both ways; nothing is closed, so callers wait for their timeouts.
    BlackHole,
}

/// One link: what it forwards to, and its mode.
#[derive(Debug, Clone)]
pub struct Proxy {
    state: Arc<Mutex<Mode>>,
    /// Bumped to close every open connection, with a reset (RST) when `resets` says so.
    epoch: watch::Sender<(u64, bool)>,
}

impl Proxy {
    /// Listens on `listen` and forwards each connection to `target`.
    pub async fn start(listen: &str, target: String) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(listen).await?;
        let (epoch, _) = watch::channel((0, false));
        let proxy = Proxy {
            state: Arc::new(Mutex::new(Mode::Pass)),
            epoch,
        };
        let accepting = proxy.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let link = accepting.clone();
                let target = target.clone();
                tokio::spawn(async move { link.forward(inbound, &target).await });
            }
        });
        Ok(proxy)
    }

    /// Sets the mode; `Drop` also closes what is open.
    pub fn set(&self, mode: Mode) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = mode;
        if mode == Mode::Drop {
            self.close_all(false);
        }
    }

    /// Closes every open connection: with a reset (RST), or an orderly close (FIN).
    pub fn close_all(&self, reset: bool) {
        self.epoch.send_modify(|(n, r)| {
            *n += 1;
            *r = reset;
        });
    }

    fn mode(&self) -> Mode {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn forward(&self, inbound: TcpStream, target: &str) {
        if self.mode() == Mode::Drop {
            return;
        }
        let Ok(outbound) = TcpStream::connect(target).await else {
            // The process behind is down: the caller sees a reset, as it would without us.
            let _ = inbound.set_zero_linger();
            return;
        };
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let mut closed = self.epoch.subscribe();
        let (mut in_read, mut in_write) = inbound.into_split();
        let (mut out_read, mut out_write) = outbound.into_split();
        let reset = tokio::select! {
            _ = self.pipe(&mut in_read, &mut out_write) => false,
            _ = self.pipe(&mut out_read, &mut in_write) => false,
            _ = closed.changed() => closed.borrow().1,
        };
        if reset {
            // Reunited to reach the sockets' options: linger 0 makes the close a RST.
            if let (Ok(inbound), Ok(outbound)) =
                (in_read.reunite(in_write), out_read.reunite(out_write))
            {
                let _ = inbound.set_zero_linger();
                let _ = outbound.set_zero_linger();
            }
        }
    }

    /// Copies `from` to `to` until either side closes, as the mode says at each chunk.
    async fn pipe(
        &self,
        from: &mut tokio::net::tcp::OwnedReadHalf,
        to: &mut tokio::net::tcp::OwnedWriteHalf,
    ) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            match self.mode() {
                Mode::Pass => {}
                Mode::Delay(d) => tokio::time::sleep(d).await,
                Mode::BlackHole => continue,
                Mode::Drop => return,
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
}
