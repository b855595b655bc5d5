//! Graceful shutdown: stop accepting, close every WebSocket with 1001, wait for the replies
//! (up to `Config::shutdown_timeout`), then stop.

use super::{Life, Server, abnormal};
use crate::Handler;
use crate::connection::Phase;

impl<H: Handler> Server<H> {
    pub(super) fn step_shutdown(&mut self) {
        if self.life == Life::Running && self.core.shared.shutdown_requested {
            self.begin_shutdown();
        }
        let Life::Draining { deadline } = self.life else {
            return;
        };
        // Connections that said all they had to say need not wait for the peer's EOF.
        for id in self.core.ids(|c| c.is_write_shut()) {
            self.remove(id, abnormal("server shutting down"));
        }
        if self.core.shared.now >= deadline {
            for id in self.core.ids(|_| true) {
                self.remove(id, abnormal("shutdown deadline passed"));
            }
            self.settle();
        }
        if self.core.conns.is_empty() {
            self.life = Life::Stopped;
            self.commands.stop();
            if self.owns_broker {
                if let Some(broker) = &self.core.shared.config.broker {
                    broker.0.stop();
                }
            }
            log::info!("shut down");
        }
    }

    /// Stops accepting and starts the close handshake with every connection.
    fn begin_shutdown(&mut self) {
        log::info!(
            "shutting down: closing {} connections",
            self.core.open_count()
        );
        for mut listener in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut listener.socket);
        }
        for id in self.core.ids(|_| true) {
            match self.core.get(id).map(|c| &c.phase) {
                Some(Phase::Open(_)) => {
                    let _ = self.core.close(id, 1001, "server shutting down");
                }
                Some(Phase::Handshaking(_)) => self.remove(id, abnormal("server shutting down")),
                _ => {}
            }
        }
        let deadline = self
            .core
            .shared
            .after(self.core.shared.config.shutdown_timeout);
        self.life = Life::Draining { deadline };
        self.settle();
    }
}
