//! The russh handler of a connection: it hands every event to the module that deals with it
//! and decides nothing itself beyond which one that is.
//!
//! Every asynchronous step is boxed: russh's session task embeds the future of each handler
//! call in its own state, which every connection holds for its whole life, so the largest
//! handler future (a login reading the store, say) would otherwise cost each idle device link
//! its size. A box costs one allocation on an event that happens a few times per connection.

use russh::server::{self, Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure};
use tether_protocol::names::ENROLL_SUBSYSTEM;

use super::front::Conn;
use super::state::Peer;

impl server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Box::pin(self.key_offered(user, offer)).await
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Box::pin(self.key_verified(user, key)).await
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        Box::pin(self.certificate_presented(user, certificate)).await
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Box::pin(self.announce_link(address, port, session)).await
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.peer() {
            Peer::Enrolling { key } => Box::pin(self.open_enrollment(channel, reply, key)).await,
            Peer::Engineer {
                identities,
                login,
                fingerprint,
            } => {
                Box::pin(self.open_engineer_session(
                    channel,
                    reply,
                    session,
                    identities,
                    login,
                    fingerprint,
                ))
                .await
            }
            // A device's session channels are its telemetry, control and key rotation.
            Peer::Device { .. } => Box::pin(self.hold_device_channel(channel, reply)).await,
            Peer::Unknown => {
                Box::pin(reply.reject(ChannelOpenFailure::AdministrativelyProhibited)).await;
            }
        }
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        Box::pin(self.open_forward(
            channel,
            host_to_connect,
            port_to_connect,
            originator_address,
            originator_port,
            reply,
        ))
        .await
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.answer_engineer_request(channel, session)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.answer_engineer_request(channel, session)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.answer_engineer_request(channel, session)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.answer_engineer_request(channel, session)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ok = match self.peer() {
            Peer::Enrolling { .. } => name == ENROLL_SUBSYSTEM,
            Peer::Engineer { .. } => name == "sftp",
            Peer::Device { device } => self.device_subsystem(channel, name, device),
            Peer::Unknown => false,
        };
        if ok {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }
}
