//! The webrtc-rs 0.21 peer connection of one participant.
//!
//! Owns what is particular to the 0.21 API: the media engine (Opus/48000/2 on PT 111 and VP8/90000
//! on PT 96 only, so the payload types the sender writes are known), the interceptor chain (NACK,
//! RTCP reports, and [`KeyframeRequestForwarder`], without which a PLI or FIR from the server never
//! reaches the application), the event handler that turns callbacks into watch channels and
//! spawned track readers, and the walk to the selected ICE candidate pair. The connection binds
//! one UDP socket on 127.0.0.1 and has mDNS off, so many clients fit in one process.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rtc::interceptor::{Attribute, Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::peer_connection::configuration::interceptor_registry::{configure_nack, configure_rtcp_reports};
use rtc::peer_connection::configuration::media_engine::{MediaEngine, MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::sansio::Protocol;
use tokio::sync::{mpsc, watch};
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCBundlePolicy, RTCConfigurationBuilder,
    RTCIceGatheringState, RTCPeerConnectionState, SettingEngineBuilder,
};

use crate::error::ClientError;

/// Payload type the client offers for Opus.
pub const OPUS_PT: u8 = 111;
/// Payload type the client offers for VP8.
pub const VP8_PT: u8 = 96;

/// The Opus codec as registered and as put on the local audio track.
pub(crate) fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// The VP8 codec as registered and as put on the local video track.
pub(crate) fn vp8_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    }
}

/// Callbacks of the peer connection, as seen by the client.
pub(crate) enum PeerEvent {
    /// A remote track opened; read it with `TrackRemote::poll`.
    Track(Arc<dyn TrackRemote>),
}

/// Forwards the peer connection's callbacks into channels; runs on the connection's driver, so it
/// never blocks.
struct Handler {
    gathering: watch::Sender<RTCIceGatheringState>,
    state: watch::Sender<RTCPeerConnectionState>,
    events: mpsc::UnboundedSender<PeerEvent>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        self.gathering.send_replace(state);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(%state, "peer connection state");
        self.state.send_replace(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.events.send(PeerEvent::Track(track));
    }
}

/// A built peer connection plus the channels its handler feeds.
pub(crate) struct Peer {
    pub pc: Arc<dyn PeerConnection>,
    pub gathering: watch::Receiver<RTCIceGatheringState>,
    pub state: watch::Receiver<RTCPeerConnectionState>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("state", &*self.state.borrow()).finish_non_exhaustive()
    }
}

/// Build a bundled (max-bundle) peer connection on one 127.0.0.1 UDP socket.
pub(crate) async fn build_peer(events: mpsc::UnboundedSender<PeerEvent>) -> Result<Peer, ClientError> {
    let mut media_engine = MediaEngine::default();
    media_engine.register_codec(
        RTCRtpCodecParameters { rtp_codec: opus_codec(), payload_type: OPUS_PT },
        RtpCodecKind::Audio,
    )?;
    media_engine
        .register_codec(RTCRtpCodecParameters { rtp_codec: vp8_codec(), payload_type: VP8_PT }, RtpCodecKind::Video)?;
    media_engine
        .register_feedback(RTCPFeedback { typ: "ccm".to_owned(), parameter: "fir".to_owned() }, RtpCodecKind::Video);
    for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
        media_engine.register_header_extension(
            RTCRtpHeaderExtensionCapability { uri: rtc::sdp::extmap::SDES_MID_URI.to_owned() },
            kind,
            None,
        )?;
    }
    let registry = configure_nack(Registry::new(), &mut media_engine);
    let registry = configure_rtcp_reports(registry);
    // Application-most, so every other interceptor has seen the inbound RTCP first.
    let registry = registry.with(Slot::from(14_000), KeyframeRequestForwarder::default());

    let config = RTCConfigurationBuilder::new().with_bundle_policy(RTCBundlePolicy::MaxBundle).build();
    let setting_engine =
        SettingEngineBuilder::new().with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled).build();

    let (gathering_tx, gathering) = watch::channel(RTCIceGatheringState::New);
    let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
    let handler = Arc::new(Handler { gathering: gathering_tx, state: state_tx, events });
    let pc = PeerConnectionBuilder::new()
        .with_configuration(config)
        .with_media_engine(media_engine)
        .with_setting_engine(setting_engine)
        .with_interceptor_registry(registry)
        .with_handler(handler as Arc<dyn PeerConnectionEventHandler>)
        .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
        .build()
        .await?;
    Ok(Peer { pc: Arc::new(pc), gathering, state })
}

/// The selected ICE candidate pair of `pc` as (local, remote) addresses, walking from any
/// transceiver's sender or receiver to its DTLS and ICE transports (they are all one, bundled).
pub(crate) async fn selected_pair(pc: &Arc<dyn PeerConnection>) -> Option<(SocketAddr, SocketAddr)> {
    for t in pc.get_transceivers().await {
        let mut transports = Vec::new();
        if let Ok(Some(s)) = t.sender().await {
            transports.push(s.transport().await);
        }
        if let Ok(Some(r)) = t.receiver().await {
            transports.push(r.transport().await);
        }
        for dtls in transports.into_iter().flatten().flatten() {
            let Ok(Some(pair)) = dtls.ice_transport().get_selected_candidate_pair().await else {
                continue;
            };
            let addr = |c: &webrtc::peer_connection::RTCIceCandidate| {
                format!("{}:{}", c.address, c.port)
                    .parse::<SocketAddr>()
                    .ok()
                    .or_else(|| c.address.parse::<std::net::IpAddr>().ok().map(|ip| SocketAddr::new(ip, c.port)))
            };
            if let (Some(l), Some(r)) = (addr(pair.local()), addr(pair.remote())) {
                return Some((l, r));
            }
        }
    }
    None
}

/// Marks inbound PLI and FIR for delivery to the application and drops every other inbound RTCP
/// packet at the end of the chain (it is for the interceptors). Marked packets about a sent stream
/// arrive at the local track's `TrackLocal::poll` as `TrackLocalEvent::OnRtcpPacket`.
#[derive(Default)]
pub(crate) struct KeyframeRequestForwarder {
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

/// Whether an RTCP packet asks for a keyframe.
pub(crate) fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequestForwarder {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let requests: Vec<Box<dyn rtc::rtcp::Packet>> =
                packets.iter().filter(|p| is_keyframe_request(p.as_ref())).cloned().collect();
            if requests.is_empty() {
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(requests);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for KeyframeRequestForwarder {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
