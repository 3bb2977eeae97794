//! Adapts the media plane ([`dais_media::MediaHandle`]) to signaling's [`MediaPlane`] trait.
//!
//! This is the only place where the two meet; ids and events are translated one to one.

use dais_media::{AnswerError, MediaHandle, OfferError, ProducerKey, SessionEvent, SessionId};
use dais_signaling::{AnswerRejection, MediaEvent, MediaPlane, OfferRejection, SessionMode};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::mpsc;

// A server offer's answer must fit the limit signaling enforces on every client SDP.
const _: () = assert!(dais_media::MAX_OFFER_BYTES < dais_proto::MAX_SDP_BYTES);

/// [`MediaPlane`] over a [`MediaHandle`].
#[derive(Debug, Clone)]
pub struct MediaAdapter {
    handle: MediaHandle,
}

impl MediaAdapter {
    /// Wrap a handle.
    pub fn new(handle: MediaHandle) -> Self {
        MediaAdapter { handle }
    }
}

impl MediaPlane for MediaAdapter {
    fn open_session(&self, session: u64, mode: SessionMode, events: mpsc::UnboundedSender<MediaEvent>) {
        let sink = Box::new(move |ev: SessionEvent| {
            let ev = match ev {
                SessionEvent::Offer { sdp } => MediaEvent::Offer { sdp },
                SessionEvent::ProducerAdded { producer, kind, codec } => {
                    MediaEvent::Published { producer: producer.0, kind: kind.into(), codec }
                }
                SessionEvent::ProducerRemoved { producer } => MediaEvent::Unpublished { producer: producer.0 },
                SessionEvent::Connected { .. } => MediaEvent::Connected,
                SessionEvent::Disconnected => MediaEvent::Disconnected,
                SessionEvent::VideoPaused { producer, reason } => {
                    MediaEvent::VideoPaused { producer: producer.0, reason: reason.as_str().to_owned() }
                }
                SessionEvent::VideoResumed { producer } => MediaEvent::VideoResumed { producer: producer.0 },
                SessionEvent::AudioActivity { producer, activity } => {
                    MediaEvent::AudioActivity { producer: producer.0, activity }
                }
            };
            let _ = events.send(ev);
        });
        let mode = match mode {
            SessionMode::Speaker => dais_media::SessionMode::Publisher,
            SessionMode::Viewer => dais_media::SessionMode::Viewer,
            SessionMode::Player => dais_media::SessionMode::Player,
        };
        self.handle.open_session(SessionId(session), mode, sink);
    }

    fn client_offer(&self, session: u64, sdp: String) -> BoxFuture<'static, Result<String, OfferRejection>> {
        let handle = self.handle.clone();
        async move {
            handle.client_offer(SessionId(session), sdp).await.map_err(|e| match e {
                OfferError::BadSdp(d) => OfferRejection::BadSdp(d),
                OfferError::NotAPublisher => OfferRejection::NotAPublisher,
                OfferError::Collision => OfferRejection::Collision,
                OfferError::TooManyStreams { audio, video, limits } => OfferRejection::TooManyStreams {
                    detail: format!(
                        "the offer sends {audio} audio and {video} video streams; a publisher may send at most {} and {}",
                        limits.audio, limits.video
                    ),
                },
                _ => OfferRejection::Gone,
            })
        }
        .boxed()
    }

    fn client_answer(&self, session: u64, sdp: String) -> BoxFuture<'static, Result<(), AnswerRejection>> {
        let handle = self.handle.clone();
        async move {
            handle.client_answer(SessionId(session), sdp).await.map_err(|e| match e {
                AnswerError::BadSdp(d) => AnswerRejection::BadSdp(d),
                AnswerError::Unexpected => AnswerRejection::Unexpected,
                _ => AnswerRejection::Gone,
            })
        }
        .boxed()
    }

    fn add_candidate(&self, session: u64, candidate: String) {
        self.handle.add_candidate(SessionId(session), candidate);
    }

    fn subscribe(&self, session: u64, producer: u64, stream_id: String, track_id: String) {
        self.handle.subscribe(SessionId(session), ProducerKey(producer), stream_id, track_id);
    }

    fn close_session(&self, session: u64) {
        self.handle.close_session(SessionId(session));
    }

    fn set_publisher(&self, session: u64, publisher: bool) {
        self.handle.set_publisher(SessionId(session), publisher);
    }

    fn set_paused(&self, producer: u64, paused: bool) {
        self.handle.set_paused(ProducerKey(producer), paused);
    }

    fn video_size(&self, session: u64, producer: u64, width: u16, height: u16) {
        self.handle.video_size(SessionId(session), ProducerKey(producer), width, height);
    }
}
