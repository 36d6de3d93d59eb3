//! The device end of an engineer's forward (`-L`, `-W`, `-J`) on a device link, shared by
//! the SSH port and the cluster's peer port.
//!
//! To an agent that serves link sessions the forward is credited
//! ([`tether_protocol::link_session::flow::bridge`]): russh grants a channel's window as
//! packets arrive, so a plain channel whose engineer stopped reading would fill its queue and
//! hold up the board's whole link; credited, only that forward waits. Older agents get a
//! plain `forwarded-tcpip` channel.

use tether_protocol::link_session::flow::{SessionEnds, bridge, credit_only};
use tether_protocol::link_session::{self as wire, Report, Request};

/// Copy buffer per direction of a plain forward: one read takes a whole 32 KiB SSH data
/// packet (what OpenSSH sends), so each becomes one packet on the link; tokio's default 8 KiB
/// made four.
const FORWARD_BUFFER: usize = 32 * 1024;

/// A byte stream to the device: a channel on its link, or a stream through the relay that
/// holds it.
pub trait DeviceStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> DeviceStream for T {}

/// The device end of a forward.
pub enum DeviceSide {
    /// A plain byte stream: a `forwarded-tcpip` channel to an agent from before credited
    /// forwards, or a stream through the relay of the cluster that holds the link.
    Stream(Box<dyn DeviceStream>),
    /// A credited forward on the link ([`tether_protocol::link_session::flow::bridge`]).
    Credited(russh::Channel<russh::server::Msg>),
}

impl DeviceSide {
    /// Carries `local` to the device until both ends are done; the bytes sent to the device
    /// and received from it.
    pub async fn carry<L>(self, mut local: L) -> (u64, u64)
    where
        L: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        match self {
            DeviceSide::Stream(mut b) => tokio::io::copy_bidirectional_with_sizes(
                &mut local,
                &mut b,
                FORWARD_BUFFER,
                FORWARD_BUFFER,
            )
            .await
            .unwrap_or((0, 0)),
            DeviceSide::Credited(channel) => {
                let ends = SessionEnds::open(channel, credit_only::<Report>, Request::credit_frame);
                bridge(ends, local).await
            }
        }
    }
}

/// Opens the device end of a forward to `host:port` on a link of this relay: credited where
/// the agent serves link sessions (an engineer who stops reading then holds up only this
/// forward, not the board's link), else `forwarded-tcpip`.
pub async fn open_on_link(
    link: &crate::registry::LiveLink,
    host: &str,
    port: u32,
    originator: (String, u32),
) -> Result<DeviceSide, russh::Error> {
    if link.link_sessions {
        let path = wire::forward_path(host, port);
        return Ok(DeviceSide::Credited(
            link.handle.channel_open_direct_streamlocal(path).await?,
        ));
    }
    let channel = link
        .handle
        .channel_open_forwarded_tcpip(host.to_string(), port, originator.0, originator.1)
        .await?;
    Ok(DeviceSide::Stream(Box::new(channel.into_stream())))
}
