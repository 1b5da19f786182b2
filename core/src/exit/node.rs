//! The running exit node: what [`ExitNode::start`] sets up (relays,
//! subscription, front certificate, announcements, the dispatcher task) and
//! [`ExitNode::stop`] takes down again.

use std::sync::Arc;
use std::time::Instant;

use nostr::{Keys, PublicKey, RelayUrl};
use tokio_util::sync::CancellationToken;

use super::dispatch::Server;
use super::heartbeat::Heartbeats;
use super::instances::{check_instance_id, random_instance_id};
use super::{announce, front, ExitConfig, ExitError};
use crate::names::{encode_nostr_domain, NameError};
use crate::stats::{NodeMetrics, Stats};
use crate::sync::lock;
use crate::tls::FrontCertificate;
use crate::transport::{exit_filter, Transport};

/// Longest wait between an exit's reconnection attempts to a relay.
pub const EXIT_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// A running exit node. Dropping it does not stop it; call [`ExitNode::stop`].
pub struct ExitNode {
    public_key: PublicKey,
    relays: Vec<RelayUrl>,
    transport: Transport,
    cancel: CancellationToken,
    stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
    certificate: Option<FrontCertificate>,
    /// A public exit's announcing task and key, to withdraw the
    /// announcement on [`ExitNode::stop`].
    announcing: Option<(tokio::task::JoinHandle<()>, Keys)>,
    /// This instance's heartbeat and its task.
    heartbeats: Arc<Heartbeats>,
    heartbeat_task: tokio::task::JoinHandle<()>,
}

impl ExitNode {
    /// Connects to the relays (at least one within `relay_timeout`),
    /// subscribes for events addressed to the exit, and starts serving.
    ///
    /// With an HTTPS front, first restores or makes and publishes the front
    /// certificate; a public exit publishes its first announcement before
    /// this returns and then one every 10 s.
    ///
    /// # Errors
    ///
    /// [`ExitError::NothingToServe`], [`ExitError::Transport`] if no relay
    /// connects, [`ExitError::Tls`] for the front certificate.
    pub async fn start(config: ExitConfig) -> Result<Self, ExitError> {
        if config.backend.is_empty() && !config.public && config.https.is_none() {
            return Err(ExitError::NothingToServe);
        }
        // Relays that want NIP-42 authentication see the exit's own key.
        let transport = Transport::with_auth_keys(config.keys.clone());
        // An exit serves others: a relay back from a restart is retried
        // within seconds, not after a phone's 60 s backoff.
        transport.set_retry_max(EXIT_RETRY_MAX);
        transport.set_replay_window(config.replay_window);
        transport
            .ensure_connected(&config.relays, config.relay_timeout)
            .await?;
        let public_key = config.keys.public_key();
        let instance = match &config.instance {
            Some(id) => {
                check_instance_id(id)?;
                id.clone()
            }
            None => random_instance_id(),
        };
        let journal = super::journal::Journal::open(
            config.state_dir.as_deref(),
            &public_key,
            &instance,
            config.replay_window,
        );
        let inbox = transport.route(public_key);
        transport
            .subscribe(exit_filter(&public_key, journal.since()), &config.relays)
            .await?;
        let cancel = CancellationToken::new();
        // Before the certificate: an instance that joins others reuses
        // theirs, which is on the relays by then.
        let (heartbeats, heartbeat_task) = Heartbeats::start(
            &transport,
            &config.keys,
            &config.relays,
            instance.clone(),
            cancel.clone(),
        )
        .await?;
        let certificate = match &config.https {
            Some(_) => {
                Some(front::front_certificate(&transport, &config.keys, &config.relays).await?)
            }
            None => None,
        };
        let tls = certificate
            .as_ref()
            .map(FrontCertificate::acceptor)
            .transpose()?;
        let announcing = if config.public {
            let task = announce::announce(&transport, &config, cancel.clone()).await;
            Some((task, config.keys.clone()))
        } else {
            None
        };
        let stats = Arc::new(Stats::default());
        let server = Server::new(
            tls,
            config.clone(),
            transport.clone(),
            stats.clone(),
            cancel.clone(),
            journal,
            heartbeats.membership.clone(),
        );
        let task = tokio::spawn(server.run(inbox));
        log::info!(
            "exit {public_key} instance {instance} serving backend `{}`{}{}",
            config.backend,
            if config.public { ", public" } else { "" },
            match &config.https {
                Some(h) => format!(", HTTPS front on port {} to {}", h.port, h.target),
                None => String::new(),
            }
        );
        Ok(Self {
            public_key,
            relays: config.relays,
            transport,
            cancel,
            stats,
            task,
            certificate,
            announcing,
            heartbeats,
            heartbeat_task,
        })
    }

    /// This process's instance id among the exit processes sharing the key.
    pub fn instance(&self) -> String {
        lock(&self.heartbeats.membership).id().to_string()
    }

    /// A snapshot of the exit's counters (streams, bytes, events,
    /// refusals, relays, instances).
    pub async fn metrics(&self) -> NodeMetrics {
        let events = self.transport.event_counts();
        let relays = self.transport.relay_counts().await;
        let (live, active) = {
            let m = lock(&self.heartbeats.membership);
            let now = Instant::now();
            (
                m.live_count(now),
                m.active_count(nostr::Timestamp::now().as_secs(), now),
            )
        };
        NodeMetrics {
            instances: Some((live as u64, active as u64)),
            ..NodeMetrics::new(&self.stats, events, relays)
        }
    }

    /// The HTTPS front's certificate, if the exit has a front.
    pub fn front_certificate(&self) -> Option<&FrontCertificate> {
        self.certificate.as_ref()
    }

    /// The exit's public key.
    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    /// The exit's `.nostr` domain with its relays (fails if a relay URL is
    /// too long for a DNS label).
    pub fn nostr_domain(&self) -> Result<String, NameError> {
        encode_nostr_domain(&self.public_key, &self.relays)
    }

    /// The exit's NIP-19 `nprofile` with its relays.
    pub fn nprofile(&self) -> String {
        use nostr::nips::nip19::{Nip19Profile, ToBech32};
        Nip19Profile::new(self.public_key, self.relays.clone())
            .to_bech32()
            .unwrap_or_default()
    }

    /// Stream events published and received (see [`Transport::event_counts`]).
    pub fn event_counts(&self) -> (u64, u64) {
        self.transport.event_counts()
    }

    /// Counters of the exit's streams.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Stops accepting streams, aborts open ones, tells the other instances
    /// that this one leaves (a last heartbeat) and disconnects from relays.
    /// A public exit first withdraws its announcement: it publishes one
    /// that expires [`WITHDRAWAL_LIFETIME`](crate::discovery::WITHDRAWAL_LIFETIME) from now (waiting up to 2 s for
    /// the relays), so entries stop picking it then instead of trying it
    /// until the last announcement ages out.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
        let _ = self.heartbeat_task.await;
        // The others take this instance's share of new streams at once.
        self.heartbeats.beat(true).await;
        if let Some((task, keys)) = self.announcing {
            // No periodic announcement may land after the withdrawal.
            let _ = task.await;
            announce::withdraw(&self.transport, &keys, &self.relays).await;
        }
        self.transport.shutdown().await;
    }
}
