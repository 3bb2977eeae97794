// dais.js: a small browser client for the Dais SFU.
//
// One DaisClient is one participant: a WebSocket to /ws carrying the JSON messages of
// crates/dais-proto (docs/protocol.md), and one bundled RTCPeerConnection. A speaker offers its
// own audio and video once; everything it receives arrives through server-initiated offers, which
// the client answers by itself. The client is the polite peer: when a server offer crosses its own
// offer it rolls its offer back, answers, and offers again. Every signaling step runs on one queue,
// so descriptions are applied in the order their messages arrived.
//
// Remote media are mapped from the SDP the server sends: each m-section's msid is
// "<participant id> <media id>", read from the remote SDP after every negotiation.
//
// Reconnects: when the socket is lost (closed without a final code, or silent for
// `signalTimeoutMs`), the client opens a new one with backoff and jitter and sends `resume` with
// the token of its last `joined`/`resumed`: the participant, its peer connection and its media
// carry on, and nobody sees it leave. Past the server's grace period (`resume_failed`) it joins
// afresh by itself, with a new peer connection, and a speaker publishes its stream again. A kick, a
// closed room, or a refused join token end it instead (`close`). When ICE fails while the socket
// lives, the client restarts ICE (`restartIce()` and a new offer).
//
// A speaker may choose its video codec (`publish(stream, {videoCodec: 'h264'})`); viewers receive
// whatever each speaker sends, so they need nothing for it.
//
// Plain ES module, no dependencies:  import { DaisClient } from '/assets/dais.js';

/** Protocol version this client speaks (dais-proto PROTOCOL_VERSION). */
export const PROTOCOL_VERSION = 1;

/**
 * A remote audio or video track, bound to the participant and media that produced it.
 * @typedef {object} RemoteMedia
 * @property {string} participantId  Publisher's participant id (the msid stream id).
 * @property {string} mediaId        Media id from `joined`/`media_published` (the msid track id).
 * @property {'audio'|'video'} kind
 * @property {string} mid            The m-section carrying it.
 * @property {MediaStreamTrack} track
 * @property {RTCRtpTransceiver} transceiver
 */

/**
 * A video codec a speaker can ask for in {@link DaisClient#publish}: the lower-case name of its
 * RTP payload format (`video/VP8`, `video/H264`, `video/VP9`, `video/AV1`).
 * @typedef {'vp8'|'h264'|'vp9'|'av1'} VideoCodec
 */

/** The video codecs `publish({videoCodec})` accepts, in no particular order of preference. */
export const VIDEO_CODECS = Object.freeze(['vp8', 'h264', 'vp9', 'av1']);

/** The reactions the server counts (`react`), in wire order. */
export const REACTIONS = Object.freeze(['applause', 'heart', 'laugh', 'thumbs_up', 'wow', 'celebrate']);

/** Longest chat text the server takes, in bytes of UTF-8 (dais-proto MAX_CHAT_BYTES). */
export const MAX_CHAT_BYTES = 500;

/** Longest question the server takes, in bytes of UTF-8 (dais-proto MAX_QUESTION_BYTES). */
export const MAX_QUESTION_BYTES = 300;

/** A question of the wire (snake_case) as the client presents it. */
function questionEntry(q) {
  return { id: q.id, participantId: q.participant_id, name: q.name, text: q.text, votes: q.votes, atMs: q.at_ms };
}

/** Chat messages a client keeps in {@link DaisClient#chat}, oldest dropped first. */
const CHAT_KEPT = 200;

/** A chat entry of the wire (snake_case) as the client presents it. */
function chatEntry(e) {
  return { id: e.id, participantId: e.participant_id, name: e.name, role: e.role, text: e.text, atMs: e.at_ms };
}

/**
 * The simulcast encodings a speaker's camera is published with (VP8 and H.264): a quarter, a half
 * and the full resolution, lowest first. The server sends each viewer the highest one its downlink
 * and its tile can take. VP9 and AV1 are published as one encoding.
 */
export const SIMULCAST_ENCODINGS = Object.freeze([
  Object.freeze({ rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 100_000 }),
  Object.freeze({ rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 }),
  Object.freeze({ rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000 }),
]);

/**
 * Options of {@link DaisClient#publish}.
 * @typedef {object} PublishOptions
 * @property {VideoCodec} [videoCodec]  Send video with this codec. Its entries go first in the
 *   video transceiver's codec preferences (`RTCRtpTransceiver.setCodecPreferences`), so the offer
 *   lists it first; every other codec, and rtx/red/ulpfec, stay after it, so negotiation still
 *   works. The video encoding is also pinned to it (`sendEncodings[0].codec`), because the
 *   browser otherwise sends the first codec of the server's answer, and the answer may list the
 *   server's own favourite first. If the server does not accept the codec at all, the browser
 *   falls back to one it did accept; the value `publish()` resolves with says which.
 *   Omitted (or `undefined`): the browser's default order (VP8 first in Chromium).
 * @property {boolean} [simulcast=true]  Publish camera video as the three
 *   {@link SIMULCAST_ENCODINGS} (VP8 and H.264 only; VP9 and AV1 always send one encoding), so
 *   that every viewer gets a layer its link and tile can take. `false` sends one full encoding.
 */

/**
 * The codecs negotiated for the own media, as lower-case codec names (`'opus'`, `'vp8'`, `'h264'`,
 * ...): per sender, the codec its encoding is pinned to when that was negotiated, else the first
 * of its negotiated codecs; that is the one the browser sends with. A kind is absent when nothing
 * of that kind is published.
 * @typedef {{audio?: string, video?: string}} PublishedCodecs
 */

/**
 * Which of {@link VIDEO_CODECS} this browser can send, from `RTCRtpSender.getCapabilities('video')`,
 * in the browser's own order of preference. Empty when the browser does not tell.
 * @returns {VideoCodec[]}
 */
export function sendableVideoCodecs() {
  const codecs = globalThis.RTCRtpSender?.getCapabilities?.('video')?.codecs ?? [];
  const names = codecs.map((c) => mimeToCodec(c.mimeType)).filter((n) => VIDEO_CODECS.includes(n));
  return [...new Set(names)];
}

/**
 * A participant as the server describes it.
 * @typedef {object} Participant
 * @property {string} id
 * @property {string} name
 * @property {'speaker'|'viewer'} role
 * @property {{id: string, kind: 'audio'|'video', codec: string, muted: boolean}[]} media
 */

/**
 * The claims of a join token (`{room, name, role, iat, exp}`), decoded WITHOUT checking the
 * signature (only the server can): for showing the name or filling in the room. `null` if `token`
 * is not a JWT.
 * @param {string} token
 * @returns {{room: string, name: string, role: string, exp: number}|null}
 */
export function tokenClaims(token) {
  try {
    const b64 = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

/**
 * Options of {@link DaisClient}.
 * @typedef {object} DaisClientOptions
 * @property {string} [url]   WebSocket URL; default `ws(s)://<this page's host>/ws`.
 * @property {string} room    Room name: 1..64 of letters, digits, `-`, `_`, `.`.
 * @property {string} name    Display name.
 * @property {'speaker'|'viewer'} role
 * @property {string} [token]  Join token (`dais token`), sent in `join`. Required when the server has a
 *   token secret; then the token's name and role replace `name` and `role`.
 * @property {boolean} [moderator=false]  Ask for the moderator grant (`moderate()`, raised hands). A
 *   server with a token secret grants it from the token's `moderator` claim only; an open one to whoever asks.
 * @property {RTCConfiguration} [rtcConfig]  Merged over `{bundlePolicy: 'max-bundle'}`. Without its own
 *   `iceServers`, the STUN/TURN servers the server hands out in `joined` (`ice_servers`) are used.
 * @property {number} [pingIntervalMs=5000] Keep-alive period; 0 disables pings (and the silence check).
 * @property {number} [joinTimeoutMs=10000]  How long `join()` waits for `joined`.
 * @property {boolean} [reconnect=true]  Reconnect (resume, else join afresh) when the socket is lost.
 * @property {number} [reconnectTimeoutMs=60000]  Give up reconnecting after this long (then `close`).
 * @property {number} [signalTimeoutMs=15000]  A socket the server has sent nothing on for this long
 *   (pings are answered every `pingIntervalMs`) counts as lost.
 * @property {number} [connectTimeoutMs=5000]  A new socket that has not opened after this long is given up.
 * @property {number} [iceRestartAfterMs=4000]  ICE "disconnected" this long (or "failed") restarts ICE.
 */

/**
 * Error raised by the server (`error` message) or by a failed client step.
 * `code` is the stable dais-proto code (e.g. `room_full`, `bad_sdp`) or a client-side one
 * (`socket_closed`, `timeout`, `not_a_speaker`, `codec_unsupported`).
 */
export class DaisError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {string} [request] the `type` of the message that caused it, when known
   */
  constructor(code, message, request) {
    super(`${code}: ${message}`);
    this.name = 'DaisError';
    this.code = code;
    this.request = request;
  }
}

/**
 * A Dais participant.
 *
 * Events (all `CustomEvent`s; the payload is `event.detail`):
 * - `joined`             `{participantId, role, participants: Participant[], viewers}`
 * - `participantjoined`  `{participant: Participant}`: someone this client sees joined (speakers see
 *                        everyone; viewers see speakers only, so to a viewer this is a speaker, or a
 *                        viewer just promoted)
 * - `participantleft`    `{participantId, participant?: Participant}`: someone this client saw left, or
 *                        (to a viewer) a speaker was demoted
 * - `audience`           `{viewers}`: the room's viewer count changed (at most about once a second)
 * - `reactions`          `{counts, totals}`: the room's reactions of the last interval and since it
 *                          began, each an object from reaction name to count (at most 2 a second)
 * - `speaking`           `{participants: string[], dominant: string|null}`: who speaks now (most active
 *                          first) and who holds the floor; only on change, at most 4 a second
 * - `mediapublished`     `{participantId, media}`
 * - `mediaunpublished`   `{participantId, mediaId}`
 * - `mutechanged`        `{participantId, mediaId, kind, muted}`
 * - `videopaused`        `{mediaId, reason}`: the server stopped sending this client a video: its
 *                        downlink cannot carry it (`reason` `'bandwidth'`; audio keeps flowing and the
 *                        video comes back by itself), or its tile is hidden (`'hidden'`, see
 *                        {@link DaisClient#setVideoSize})
 * - `videoresumed`       `{mediaId}`: that video is sent again
 * - `track`              `RemoteMedia`: a remote track started arriving (or moved to another m-line)
 * - `trackremoved`       `RemoteMedia`: the server stopped sending it
 * - `connectionstatechange` `{state}`: the RTCPeerConnection's connectionState
 * - `chathistory`        `{messages, viewerChat}`: the room's last chat messages, after each join and
 *                        resume (also kept in {@link DaisClient#chat})
 * - `chat`               `{id, participantId, name, role, text, atMs}`: a new chat message
 * - `chatdeleted`        `{id}`: an operator deleted that message
 * - `chatpolicy`         `{viewerChat}`: an operator turned viewer chat on or off
 * - `hands`              `{hands}`: the room's raised hands, `[{participantId, name, atMs}]` earliest
 *                        first (speakers and moderators only; also in {@link DaisClient#hands})
 * - `hand`               `{raised}`: this viewer's own hand went up or down
 * - `questions`          {@link DaisClient#questions}: the room's questions changed (at most once a
 *                        second): open ones ranked by votes (a viewer gets the top 10, speakers and
 *                        moderators all), `openCount`, and the latest answered ones
 * - `asked`              `{id}`: this client's `ask()` was taken as question `id`
 * - `roomtitle`          `{title}`: the room's event title arrived after joining (also in
 *                        {@link DaisClient#title})
 * - `pong`               `{id, rttMs}`
 * - `rolechanged`        `{participantId, role, self}`: an operator promoted or demoted someone in place;
 *                        when `self`, a promoted client may now `publish()`, a demoted one stopped capturing
 * - `draining`           `{withinMs}`: the server is shutting down gracefully; the socket closes within
 *                        `withinMs`, then the client reconnects (to whichever server then answers the URL)
 * - `reconnecting`       `{attempt, delayMs, reason}`: the socket was lost; a new one opens in `delayMs`
 * - `reconnected`        `{resumed, mediaReset}`: `resumed`: the same participant carries on (with a new
 *                        peer connection when `mediaReset`); otherwise it joined afresh (a new participant
 *                        id; `participantleft`/`trackremoved` for everything before, then `joined` again)
 * - `icerestart`         `{state}`: ICE was `failed`, or `disconnected` for `iceRestartAfterMs`: the client
 *                        restarts it with a new offer (the participant and its streams stay)
 * - `error`              `{error: DaisError}`: a server error, or a failed negotiation step
 * - `close`              `{code, reason}`: the client is finished: left, kicked, room closed, token
 *                        refused, or reconnecting gave up
 *
 * @example
 *   const client = new DaisClient({room: 'panel', name: 'Ann', role: 'speaker'});
 *   client.addEventListener('track', (e) => show(e.detail.participantId, e.detail.track));
 *   await client.join();
 *   const stream = await navigator.mediaDevices.getUserMedia({audio: true, video: true});
 *   const codecs = await client.publish(stream, {videoCodec: 'vp9'}); // {audio: 'opus', video: 'vp9'}
 *   client.setMuted('audio', true);
 */
export class DaisClient extends EventTarget {
  /** @param {DaisClientOptions} options */
  constructor({
    url, room, name, role, token, moderator = false, rtcConfig = {}, pingIntervalMs = 5000, joinTimeoutMs = 10000, reconnect = true,
    reconnectTimeoutMs = 60000, signalTimeoutMs = 15000, connectTimeoutMs = 5000, iceRestartAfterMs = 4000,
  }) {
    super();
    if (role !== 'speaker' && role !== 'viewer') throw new TypeError(`role must be "speaker" or "viewer", not ${role}`);
    /** WebSocket URL in use. */
    this.url = url ?? defaultUrl();
    /** Room name. */
    this.room = room;
    /** Whether the moderator grant is asked for; after `join()` whether the server granted it. */
    this.moderator = !!moderator;
    /** Raised hands of the room, earliest first, as speakers and moderators see them (`hands`). */
    this.hands = [];
    /** The event's title (`joined.title`, `room_title`), or null when the room has none. */
    this.title = null;
    /** Whether this viewer's own hand is raised, as the server last said (`hand`). */
    this.handRaised = false;
    /** Display name. */
    this.name = name;
    /** Requested role; after `join()` the role the server granted. */
    this.role = role;
    /** This participant's id, set by `join()`. @type {string|null} */
    this.participantId = null;
    /** Everyone else in the room this client sees, by id: every speaker, and to a speaker every
     * viewer too. @type {Map<string, Participant>} */
    this.participants = new Map();
    /** Viewers in the room, this client included if it is one; set by `join()`, kept current by the
     * server's `audience` messages. */
    this.viewers = 0;
    /** Remote media now arriving, by media id. @type {Map<string, RemoteMedia>} */
    this.remoteMedia = new Map();
    /** The peer connection, created by `join()`; use it for `getStats()`. @type {RTCPeerConnection|null} */
    this.pc = null;
    /** The stream given to `publish()`. @type {MediaStream|null} */
    this.localStream = null;
    /** Codecs negotiated for the own media, set when `publish()` resolves. @type {PublishedCodecs} */
    this.publishedCodecs = {};
    /** Own mute state by kind. */
    this.muted = { audio: false, video: false };
    /** The room's latest `speaking` state (who speaks, who holds the floor). */
    this.speaking = { participants: [], dominant: null };
    /** `performance.now()` when `join()` was called and when `joined` arrived. */
    this.timing = { joinStarted: NaN, joined: NaN };

    this._token = token || null;
    this._rtcConfig = { bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require', ...rtcConfig };
    this._appIceServers = Boolean(rtcConfig.iceServers);
    this._pingIntervalMs = pingIntervalMs;
    this._joinTimeoutMs = joinTimeoutMs;
    this._reconnectEnabled = reconnect;
    this._reconnectTimeoutMs = reconnectTimeoutMs;
    this._signalTimeoutMs = signalTimeoutMs;
    this._connectTimeoutMs = connectTimeoutMs;
    this._iceRestartAfterMs = iceRestartAfterMs;
    this._ws = null;
    this._closed = false;
    this._everOpened = false;         // join() was called
    this._initial = null;             // join()'s promise, until the first joined (or failure)
    this._hello = null;               // 'join' or 'resume' sent on this socket and not yet answered
    this._resumeToken = null;
    this._reconnecting = null;        // {since, attempt, timer} while a lost socket is being replaced
    this._terminal = false;           // the server ended this participant: do not come back
    this._lastHeard = 0;              // performance.now() of the last message from the server
    this._iceTimer = 0;
    this._publishOptions = {};
    this._muteUnsent = new Set();     // kinds whose mute state changed while no socket carried us
    this._videoSizes = new Map();     // mediaId -> {width, height} in device pixels, as last told
    this._pingTimer = 0;
    this._pingSeq = 0;
    this._pingsSent = new Map();
    this._queue = Promise.resolve();
    // Negotiation state of the page's own offers.
    this._wantOffer = false;          // an offer should be (re)sent once the state allows
    this._expectedCollisions = 0;     // own offers rolled back for a server offer; the server rejects each once
    this._answerWaiters = [];         // publish() promises waiting for the server's answer
    this._candidatesHeld = [];        // local candidates gathered before their description was sent
    this._descriptionSent = false;
    this._midBindings = new Map();    // mid -> media id, as of the last remote description
    /**
     * The room's chat as this client knows it: `messages` oldest first (the server's history on each
     * join or resume, then every new one, at most 200), and whether viewers may chat.
     * @type {{messages: {id: number, participantId: string, name: string, role: string, text: string, atMs: number}[], viewerChat: boolean}}
     */
    this.chat = { messages: [], viewerChat: true };
    /**
     * The room's questions as the server last sent them (`questions`): `open` ranked (most votes
     * first), `openCount` open in the room, `answered` the latest answered, most recent first.
     * @type {{open: {id: number, participantId: string, name: string, text: string, votes: number, atMs: number}[], openCount: number, answered: object[]}}
     */
    this.questions = { open: [], openCount: 0, answered: [] };
    /** Ids of the questions this participant voted for (the server counts each vote once). */
    this.voted = new Set();
  }

  /**
   * Open the socket and join the room. Resolves with the `joined` payload once the server accepted;
   * rejects with a {@link DaisError} (e.g. `room_full`, `invalid_name`) otherwise.
   * @returns {Promise<{participantId: string, role: string, participants: Participant[]}>}
   */
  join() {
    if (this._everOpened) return Promise.reject(new DaisError('already_joined', 'join() was already called'));
    this._everOpened = true;
    this.timing.joinStarted = performance.now();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._settleInitial(new DaisError('timeout', `no "joined" within ${this._joinTimeoutMs} ms`));
        this.close();
      }, this._joinTimeoutMs);
      this._initial = { resolve, reject, timer };
      if (this._pingIntervalMs > 0) this._pingTimer = setInterval(() => this._tick(), this._pingIntervalMs);
      this._openSocket();
    });
  }

  /**
   * Publish a speaker's media: one sendonly transceiver per track of `stream` (audio and video),
   * then an offer. Resolves once the server's answer is applied, with the codecs negotiated (also
   * kept in {@link DaisClient#publishedCodecs}); what is actually on the wire shows in
   * `pc.getStats()` as the `codecId` of each `outbound-rtp` entry.
   *
   * Rejects with a {@link DaisError} `codec_unsupported`, before touching the peer connection,
   * when `videoCodec` is not one of {@link VIDEO_CODECS} or this browser cannot send it (see
   * {@link sendableVideoCodecs}); with `not_joined` / `not_a_speaker` when called too early or
   * by a viewer; and with the server's error when it refuses the offer.
   *
   * @example
   *   await client.publish(stream, { videoCodec: 'h264' });   // -> {audio: 'opus', video: 'h264'}
   * @param {MediaStream} stream
   * @param {PublishOptions} [options]
   * @returns {Promise<PublishedCodecs>}
   */
  publish(stream, { videoCodec, simulcast = true } = {}) {
    if (!this.pc) return Promise.reject(new DaisError('not_joined', 'publish() needs join() first'));
    if (this.role !== 'speaker') return Promise.reject(new DaisError('not_a_speaker', 'only a speaker publishes'));
    const videoTracks = stream.getVideoTracks();
    let videoChoice = null;
    if (videoCodec !== undefined && videoCodec !== null && videoTracks.length > 0) {
      try {
        videoChoice = chooseVideoCodec(videoCodec);
      } catch (err) {
        return Promise.reject(err);
      }
    }
    this.localStream = stream;
    this._publishOptions = { videoCodec, simulcast };
    const layered = simulcast && (videoChoice === null || videoChoice.name === 'vp8' || videoChoice.name === 'h264');
    const added = [];
    try {
      for (const track of [...stream.getAudioTracks(), ...videoTracks]) {
        track.enabled = !this.muted[track.kind];
        const init = { direction: 'sendonly', streams: [stream] };
        // The encoding's codec makes the browser send with it even when the answer lists another
        // negotiated codec first (an answerer may order codecs by its own preference).
        if (track.kind === 'video' && layered) {
          init.sendEncodings = SIMULCAST_ENCODINGS.map((e) => (videoChoice ? { ...e, codec: videoChoice.send } : { ...e }));
        } else if (track.kind === 'video' && videoChoice) {
          init.sendEncodings = [{ codec: videoChoice.send }];
        }
        const transceiver = this.pc.addTransceiver(track, init);
        added.push(transceiver);
        if (track.kind === 'video' && videoChoice) transceiver.setCodecPreferences(videoChoice.preferences);
      }
    } catch (err) {
      // Leave nothing half-published: these transceivers have no m-line yet, so stopping them
      // keeps them out of every offer.
      for (const t of added) t.stop();
      this.localStream = null;
      return Promise.reject(videoChoice
        ? new DaisError('codec_unsupported', `this browser refused to send ${videoChoice.name} video: ${err?.message ?? err}`)
        : toDaisError(err));
    }
    const answered = new Promise((resolve, reject) => this._answerWaiters.push({ resolve, reject }));
    this._wantOffer = true;
    this._enqueue(() => this._maybeOffer());
    return answered.then(() => {
      this.publishedCodecs = this._negotiatedSendCodecs();
      return this.publishedCodecs;
    });
  }

  /**
   * Mute or unmute own audio or video: disables the local track (no renegotiation) and tells the
   * room, which sees a `mutechanged` event.
   * @param {'audio'|'video'} kind
   * @param {boolean} muted
   */
  setMuted(kind, muted) {
    this.muted[kind] = muted;
    for (const track of this.localStream?.getTracks() ?? []) {
      if (track.kind === kind) track.enabled = !muted;
    }
    if (this._carrying()) this._send({ type: 'mute', kind, muted });
    else this._muteUnsent.add(kind);
  }

  /**
   * React: one of {@link REACTIONS}. The server counts it into the room's totals, which every
   * participant receives as a `reactions` event at most twice a second. Beyond 2 a second (bursts of
   * 5) the server answers with the error `too_many_reactions`. Not sent while no socket carries us.
   * @param {string} reaction
   */
  react(reaction) {
    if (!REACTIONS.includes(reaction)) throw new DaisError('bad_message', `unknown reaction ${reaction}`);
    if (this._carrying()) this._send({ type: 'react', reaction });
  }

  /**
   * Write to the room's chat. Everyone, this client included, receives it as a `chat` event. The
   * server refuses with an `error` event whose `error.request` is `'chat'`: `invalid_chat` (empty,
   * over {@link MAX_CHAT_BYTES} bytes, control characters), `too_many_chats` (over one every 2 s,
   * bursts of 3), `chat_silenced` or `chat_disabled` (an operator's doing). Returns false, sending
   * nothing, while no socket carries us (reconnecting).
   * @param {string} text
   * @returns {boolean}
   */
  sendChat(text) {
    if (!this._carrying()) return false;
    this._send({ type: 'chat', text: String(text) });
    return true;
  }

  /**
   * Ask the room a question. The server answers with an `asked` event carrying its id, or an
   * `error` event whose `error.request` is `'ask'`: `invalid_question` (empty, over
   * {@link MAX_QUESTION_BYTES} bytes), `too_many_questions` (over one every 10 s, bursts of 2),
   * `questions_full` (100 open in the room) or `chat_silenced`. Returns false while no socket
   * carries us.
   * @param {string} text
   * @returns {boolean}
   */
  ask(text) {
    if (!this._carrying()) return false;
    this._send({ type: 'ask', text: String(text) });
    return true;
  }

  /**
   * Vote for an open question, or take the vote back (`undo`); kept in {@link DaisClient#voted}.
   * Refusals: `unknown_question` (not open), `too_many_votes` (over 2 a second, bursts of 10).
   * Returns false while no socket carries us.
   * @param {number} id
   * @param {boolean} [undo=false]
   * @returns {boolean}
   */
  upvote(id, undo = false) {
    if (!this._carrying()) return false;
    this._send(undo ? { type: 'upvote', question: id, undo: true } : { type: 'upvote', question: id });
    if (undo) this.voted.delete(id);
    else this.voted.add(id);
    return true;
  }

  /**
   * Mark an open question answered (speakers and moderators; others get `not_moderator`).
   * Returns false while no socket carries us.
   * @param {number} id
   * @returns {boolean}
   */
  answerQuestion(id) {
    if (!this._carrying()) return false;
    this._send({ type: 'answer_question', question: id });
    return true;
  }

  /**
   * Raise (or lower) this viewer's hand. Speakers and moderators see the room's raised hands as a
   * `hands` event; this client gets `hand` with its own state. Returns false while no socket
   * carries us.
   * @param {boolean} raised
   * @returns {boolean}
   */
  raiseHand(raised) {
    if (!this._carrying()) return false;
    this._send({ type: 'raise_hand', raised: !!raised });
    return true;
  }

  /**
   * A moderator's action (needs the moderator grant, else the error `not_moderator`): `'promote'`,
   * `'demote'`, `'kick'`, `'lower_hand'` with `{participant}`; `'mute'` with `{participant, kind,
   * muted}`; `'delete_chat'` with `{message}`; `'delete_question'` with `{question}`. A target not
   * in the room is `unknown_target`. Returns false while no socket carries us.
   * @param {'promote'|'demote'|'kick'|'mute'|'lower_hand'|'delete_chat'|'delete_question'} action
   * @param {{participant?: string, kind?: 'audio'|'video', muted?: boolean, message?: number, question?: number}} [target]
   * @returns {boolean}
   */
  moderate(action, target = {}) {
    if (!this._carrying()) return false;
    this._send({ type: 'moderate', action, ...target });
    return true;
  }

  /**
   * Tell the server the size at which a received video is shown, in CSS pixels (multiplied by
   * `devicePixelRatio` here): it then sends no larger a simulcast layer than that needs. `0, 0`
   * hides the tile, which pauses that video until a size is set again. Remembered across
   * reconnects. {@link DaisClient#observeVideoSize} does this for an element.
   * @param {string} mediaId
   * @param {number} width
   * @param {number} height
   */
  setVideoSize(mediaId, width, height) {
    const dpr = globalThis.devicePixelRatio || 1;
    const size = { width: Math.max(0, Math.round(width * dpr)), height: Math.max(0, Math.round(height * dpr)) };
    const last = this._videoSizes.get(mediaId);
    if (last && last.width === size.width && last.height === size.height) return;
    this._videoSizes.set(mediaId, size);
    if (this._carrying()) this._send({ type: 'video_size', media: mediaId, ...size });
  }

  /**
   * Keep the server told of the size an element shows a received video at (a `ResizeObserver`);
   * an element that is not displayed (width or height 0) hides the video. Returns a function that
   * stops observing.
   * @param {string} mediaId
   * @param {Element} element
   * @returns {() => void}
   */
  observeVideoSize(mediaId, element) {
    const report = () => this.setVideoSize(mediaId, element.clientWidth, element.clientHeight);
    if (typeof globalThis.ResizeObserver !== 'function') {
      report();
      return () => {};
    }
    const observer = new ResizeObserver(report);
    observer.observe(element);
    report();
    return () => observer.disconnect();
  }

  /**
   * Leave the room: sends `leave`, waits up to `timeoutMs` for the server to close the socket,
   * then closes everything. Local tracks are not stopped (the caller owns them).
   * @param {number} [timeoutMs=2000]
   * @returns {Promise<void>}
   */
  async leave(timeoutMs = 2000) {
    if (this._closed) return;
    this._terminal = true;
    const closed = new Promise((resolve) => this.addEventListener('close', () => resolve(), { once: true }));
    this._send({ type: 'leave' });
    await Promise.race([closed, new Promise((r) => setTimeout(r, timeoutMs))]);
    this.close();
  }

  /** Close the socket and the peer connection at once (sending `leave` if the socket is open, so the
   * room hears it now rather than after the server's grace period). */
  close() {
    this._terminal = true;
    this._send({ type: 'leave' });
    if (this._ws && this._ws.readyState <= WebSocket.OPEN) this._ws.close(1000, 'client closed');
    this._finish(1000, 'client closed');
  }

  /**
   * The remote media carried by an m-section, e.g. to map an inbound-rtp stats entry (`mid`).
   * @param {string} mid
   * @returns {RemoteMedia|undefined}
   */
  mediaForMid(mid) {
    const mediaId = this._midBindings.get(mid);
    return mediaId === undefined ? undefined : this.remoteMedia.get(mediaId);
  }

  /**
   * Add a listener; returns a function that removes it.
   * @param {string} type
   * @param {(detail: any, event: CustomEvent) => void} fn called with `event.detail`
   * @returns {() => void}
   */
  on(type, fn) {
    const listener = (e) => fn(e.detail, e);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  // ---- internals -------------------------------------------------------------------------

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _send(message) {
    if (this._ws?.readyState === WebSocket.OPEN) this._ws.send(JSON.stringify(message));
  }

  _enqueue(step) {
    const run = this._queue.then(step);
    this._queue = run.catch((err) => {
      if (!this._closed) this._emit('error', { error: toDaisError(err) });
    });
    return run;
  }

  _onMessage(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      this._emit('error', { error: new DaisError('bad_json', 'server sent a frame that is not JSON') });
      return;
    }
    switch (msg.type) {
      case 'joined': return this._handleJoined(msg);
      case 'resumed': return this._handleResumed(msg);
      case 'offer': return void this._enqueue(() => this._handleServerOffer(msg.sdp));
      case 'answer': return void this._enqueue(() => this._handleServerAnswer(msg.sdp));
      case 'participant_joined': {
        const p = normalizeParticipant(msg.participant);
        this.participants.set(p.id, p);
        return this._emit('participantjoined', { participant: p });
      }
      case 'participant_left': {
        const participant = this.participants.get(msg.participant_id);
        this.participants.delete(msg.participant_id);
        return this._emit('participantleft', { participantId: msg.participant_id, participant });
      }
      case 'media_published': {
        const p = this.participants.get(msg.participant_id);
        if (p) p.media = [...p.media.filter((m) => m.id !== msg.media.id), msg.media];
        return this._emit('mediapublished', { participantId: msg.participant_id, media: msg.media });
      }
      case 'media_unpublished': {
        const p = this.participants.get(msg.participant_id);
        if (p) p.media = p.media.filter((m) => m.id !== msg.media_id);
        return this._emit('mediaunpublished', { participantId: msg.participant_id, mediaId: msg.media_id });
      }
      case 'mute_changed': {
        const m = this.participants.get(msg.participant_id)?.media.find((x) => x.id === msg.media_id);
        if (m) m.muted = msg.muted;
        return this._emit('mutechanged', {
          participantId: msg.participant_id, mediaId: msg.media_id, kind: msg.kind, muted: msg.muted,
        });
      }
      case 'pong': {
        const sentAt = this._pingsSent.get(msg.id);
        this._pingsSent.delete(msg.id);
        return this._emit('pong', { id: msg.id, rttMs: sentAt === undefined ? NaN : performance.now() - sentAt });
      }
      case 'draining': return this._emit('draining', { withinMs: msg.within_ms });
      case 'video_paused': return this._emit('videopaused', { mediaId: msg.media_id, reason: msg.reason });
      case 'video_resumed': return this._emit('videoresumed', { mediaId: msg.media_id });
      case 'audience':
        this.viewers = msg.viewers;
        return this._emit('audience', { viewers: msg.viewers });
      case 'reactions':
        return this._emit('reactions', { counts: msg.counts, totals: msg.totals });
      case 'chat_history':
        this.chat = { messages: (msg.messages ?? []).map(chatEntry), viewerChat: msg.viewer_chat !== false };
        return this._emit('chathistory', this.chat);
      case 'chat': {
        const entry = chatEntry(msg);
        this.chat.messages.push(entry);
        if (this.chat.messages.length > CHAT_KEPT) this.chat.messages.shift();
        return this._emit('chat', entry);
      }
      case 'chat_deleted':
        this.chat.messages = this.chat.messages.filter((m) => m.id !== msg.id);
        return this._emit('chatdeleted', { id: msg.id });
      case 'hands':
        this.hands = (msg.participants ?? []).map((h) => ({ participantId: h.participant_id, name: h.name, atMs: h.at_ms }));
        return this._emit('hands', { hands: this.hands });
      case 'hand':
        this.handRaised = msg.raised === true;
        return this._emit('hand', { raised: this.handRaised });
      case 'questions':
        this.questions = {
          open: (msg.open ?? []).map(questionEntry),
          openCount: msg.open_count ?? 0,
          answered: (msg.answered ?? []).map(questionEntry),
        };
        return this._emit('questions', this.questions);
      case 'asked': return this._emit('asked', { id: msg.question });
      case 'room_title':
        this.title = msg.title;
        return this._emit('roomtitle', { title: msg.title });
      case 'chat_policy':
        this.chat.viewerChat = msg.viewer_chat !== false;
        return this._emit('chatpolicy', { viewerChat: this.chat.viewerChat });
      case 'speaking':
        this.speaking = { participants: msg.participants, dominant: msg.dominant };
        return this._emit('speaking', this.speaking);
      case 'role_changed': {
        const p = this.participants.get(msg.participant_id);
        if (p) p.role = msg.role;
        const self = msg.participant_id === this.participantId;
        if (self) this._setOwnRole(msg.role);
        return this._emit('rolechanged', { participantId: msg.participant_id, role: msg.role, self });
      }
      case 'error': return this._handleError(msg);
      default:
        // Unknown types are ignored so that a newer server can add messages.
        return undefined;
    }
  }

  _handleJoined(msg) {
    const rejoined = this._reconnecting !== null;
    this._hello = null;
    this.participantId = msg.participant_id;
    this.role = msg.role;
    this.room = msg.room;
    this.moderator = msg.moderator === true;
    this.title = msg.title ?? null;
    this._resumeToken = msg.resume_token ?? null;
    this.timing.joined = performance.now();
    for (const p of msg.participants ?? []) this.participants.set(p.id, normalizeParticipant(p));
    this.viewers = msg.viewers ?? 0;
    this._useIceServers(msg.ice_servers);
    this._createPeerConnection();
    const detail = {
      participantId: this.participantId, role: this.role, participants: [...this.participants.values()],
      viewers: this.viewers,
    };
    this._emit('joined', detail);
    if (this._initial) {
      this._settleInitial(null, detail);
      return;
    }
    if (rejoined) {
      // A new participant starts unmuted: tell the server what is muted before publishing.
      this._muteUnsent.clear();
      if (this.role === 'speaker') {
        for (const kind of ['audio', 'video']) if (this.muted[kind]) this._send({ type: 'mute', kind, muted: true });
      }
      this._endReconnect({ resumed: false, mediaReset: true });
      this._republish();
      this._resendVideoSizes();
    }
  }

  // Media ids are the server's, so sizes told before a reconnect still name the same streams.
  _resendVideoSizes() {
    for (const [media, size] of this._videoSizes) this._send({ type: 'video_size', media, ...size });
  }

  // The socket carries the same participant again. The room is reconciled with what the server
  // says it is now; the media carry on, or start over when the server lost them.
  _handleResumed(msg) {
    this._hello = null;
    if ((msg.title ?? null) !== this.title) {
      this.title = msg.title ?? null;
      this._emit('roomtitle', { title: this.title });
    }
    this._resumeToken = msg.resume_token;
    // An operator may have promoted or demoted us meanwhile: as if `role_changed` had come.
    const roleChanged = msg.role !== this.role;
    if (roleChanged) this._setOwnRole(msg.role);
    this._reconcile(msg.participants ?? []);
    if (typeof msg.viewers === 'number' && msg.viewers !== this.viewers) {
      this.viewers = msg.viewers;
      this._emit('audience', { viewers: this.viewers });
    }
    this._useIceServers(msg.ice_servers);
    for (const kind of this._muteUnsent) this._send({ type: 'mute', kind, muted: this.muted[kind] });
    this._muteUnsent.clear();
    this._resendVideoSizes();
    if (msg.media_reset) {
      this._dropMedia();
      this._createPeerConnection();
      this._republish();
    } else {
      this._enqueue(async () => {
        // Our own offer may have been lost with the socket: offer again.
        if (this.pc?.signalingState === 'have-local-offer') {
          await this.pc.setLocalDescription({ type: 'rollback' });
          this._wantOffer = true;
        }
        await this._maybeOffer();
      });
      const ice = this.pc?.iceConnectionState;
      if (ice === 'failed' || ice === 'disconnected' || this._iceRestartWanted) this._restartIce();
    }
    this._endReconnect({ resumed: true, mediaReset: Boolean(msg.media_reset) });
    if (roleChanged) this._emit('rolechanged', { participantId: this.participantId, role: msg.role, self: true });
  }

  // Our own role changed: a demoted speaker stops capturing (the server stops its m-lines).
  _setOwnRole(role) {
    this.role = role;
    if (role === 'viewer') {
      for (const track of this.localStream?.getTracks() ?? []) track.stop();
      this.localStream = null;
    }
  }

  // The server's STUN/TURN servers (TURN credentials minted for this participant), unless the
  // application brought its own. Their fields are RTCIceServer's.
  _useIceServers(servers) {
    if (Array.isArray(servers) && servers.length && !this._appIceServers) {
      this._rtcConfig = { ...this._rtcConfig, iceServers: servers };
    }
  }

  // Make the roster what the server says it is now, with an event for every difference.
  _reconcile(list) {
    const next = new Map(list.map((p) => [p.id, normalizeParticipant(p)]));
    for (const [id, old] of [...this.participants]) {
      if (next.has(id)) continue;
      for (const m of old.media) this._emit('mediaunpublished', { participantId: id, mediaId: m.id });
      this.participants.delete(id);
      this._emit('participantleft', { participantId: id, participant: old });
    }
    for (const [id, p] of next) {
      const old = this.participants.get(id);
      this.participants.set(id, p);
      if (!old) {
        this._emit('participantjoined', { participant: p });
        continue;
      }
      if (old.role !== p.role) this._emit('rolechanged', { participantId: id, role: p.role, self: false });
      for (const m of old.media) {
        if (!p.media.some((x) => x.id === m.id)) this._emit('mediaunpublished', { participantId: id, mediaId: m.id });
      }
      for (const m of p.media) {
        const was = old.media.find((x) => x.id === m.id);
        if (!was) this._emit('mediapublished', { participantId: id, media: m });
        else if (was.muted !== m.muted) {
          this._emit('mutechanged', { participantId: id, mediaId: m.id, kind: m.kind, muted: m.muted });
        }
      }
    }
  }

  // The participant is gone (joining afresh): everyone and everything it saw goes.
  _dropRoom() {
    for (const [id, p] of [...this.participants]) {
      this.participants.delete(id);
      this._emit('participantleft', { participantId: id, participant: p });
    }
    this._dropMedia();
    this.participantId = null;
  }

  // The peer connection and everything received on it end (the participant may stay).
  _dropMedia() {
    clearTimeout(this._iceTimer);
    this._iceRestartWanted = false;
    for (const media of [...this.remoteMedia.values()]) this._emit('trackremoved', media);
    this.remoteMedia.clear();
    this._midBindings.clear();
    this._rejectAnswerWaiters(new DaisError('media_reset', 'the media connection was replaced'));
    this.pc?.close();
    this.pc = null;
    this._wantOffer = false;
    this._expectedCollisions = 0;
    this._candidatesHeld = [];
    this._descriptionSent = false;
  }

  // A speaker whose media connection started over sends its stream again.
  _republish() {
    if (this.role !== 'speaker' || !this.localStream) return;
    if (this.localStream.getTracks().every((t) => t.readyState === 'ended')) return;
    this.publish(this.localStream, this._publishOptions).catch((error) => {
      if (!this._closed) this._emit('error', { error: toDaisError(error) });
    });
  }

  _handleError(msg) {
    const error = new DaisError(msg.code, msg.message ?? '', msg.request);
    if (TERMINAL_CODES.has(msg.code)) this._terminal = true;
    if (this._hello && (msg.request === 'join' || msg.request === 'resume')) {
      this._helloFailed(error);
      return;
    }
    if (this.participantId === null) {
      this._emit('error', { error });
      return;
    }
    if (msg.code === 'offer_collision') {
      // Our offer crossed a server offer. If we already rolled it back while answering that offer,
      // this is the expected echo; otherwise roll back now and offer again after the server's offer.
      this._enqueue(async () => {
        if (this._expectedCollisions > 0) {
          this._expectedCollisions -= 1;
          return;
        }
        if (this.pc.signalingState === 'have-local-offer') {
          await this.pc.setLocalDescription({ type: 'rollback' });
        }
        this._wantOffer = true;
      });
      return;
    }
    if (msg.request === 'offer') {
      // The server refused our offer: the publish() that caused it fails.
      this._enqueue(async () => {
        if (this.pc.signalingState === 'have-local-offer') await this.pc.setLocalDescription({ type: 'rollback' });
        this._rejectAnswerWaiters(error);
      });
    }
    this._emit('error', { error });
  }

  _createPeerConnection() {
    const pc = new RTCPeerConnection(this._rtcConfig);
    this.pc = pc;
    pc.addEventListener('icecandidate', (e) => {
      const candidate = e.candidate && e.candidate.candidate ? e.candidate.candidate : null;
      const message = { type: 'candidate', candidate, sdpMid: candidate ? e.candidate.sdpMid : null };
      if (this._descriptionSent) this._send(message);
      else this._candidatesHeld.push(message);
    });
    pc.addEventListener('connectionstatechange', () => {
      if (this.pc === pc) this._emit('connectionstatechange', { state: pc.connectionState });
    });
    pc.addEventListener('iceconnectionstatechange', () => {
      if (this.pc === pc) this._watchIce();
    });
  }

  // Send our own offer if one is wanted and no negotiation is under way. Runs on the queue.
  async _maybeOffer() {
    const pc = this.pc;
    if (!pc || !this._wantOffer || this._closed || pc.signalingState !== 'stable') return;
    this._wantOffer = false;
    this._descriptionSent = false;
    await pc.setLocalDescription(await pc.createOffer());
    this._send({ type: 'offer', sdp: pc.localDescription.sdp });
    this._flushCandidates();
  }

  async _handleServerOffer(sdp) {
    const pc = this.pc;
    if (!pc) return;
    if (pc.signalingState === 'have-local-offer') {
      // Glare. We are the polite peer: drop our offer, answer theirs, then offer again.
      await pc.setLocalDescription({ type: 'rollback' });
      this._expectedCollisions += 1;
      this._wantOffer = true;
    }
    await pc.setRemoteDescription({ type: 'offer', sdp });
    this._bindRemoteMedia();
    this._descriptionSent = false;
    await pc.setLocalDescription(await pc.createAnswer());
    this._send({ type: 'answer', sdp: pc.localDescription.sdp });
    this._flushCandidates();
    await this._maybeOffer();
  }

  async _handleServerAnswer(sdp) {
    const pc = this.pc;
    if (!pc || pc.signalingState !== 'have-local-offer') return; // stale: that offer was rolled back
    await pc.setRemoteDescription({ type: 'answer', sdp });
    this._bindRemoteMedia();
    const waiters = this._answerWaiters;
    this._answerWaiters = [];
    for (const w of waiters) w.resolve();
    await this._maybeOffer();
  }

  _flushCandidates() {
    this._descriptionSent = true;
    for (const m of this._candidatesHeld.splice(0)) this._send(m);
  }

  _rejectAnswerWaiters(error) {
    const waiters = this._answerWaiters;
    this._answerWaiters = [];
    for (const w of waiters) w.reject(error);
  }

  // The codec each own sender sends with: the codec of its first encoding when one is set and
  // negotiated, else the first of its negotiated media codecs.
  _negotiatedSendCodecs() {
    const out = {};
    for (const t of this.pc?.getTransceivers() ?? []) {
      const track = t.sender.track;
      if (!track || t.stopped || !(t.currentDirection === 'sendonly' || t.currentDirection === 'sendrecv')) continue;
      const params = t.sender.getParameters();
      const negotiated = (params.codecs ?? []).filter((c) => !/\/(rtx|red|ulpfec|flexfec-03)$/i.test(c.mimeType));
      const pinned = params.encodings?.[0]?.codec;
      const codec = (pinned && negotiated.find((c) => sameCodec(c, pinned))) || negotiated[0];
      if (codec && !(track.kind in out)) out[track.kind] = mimeToCodec(codec.mimeType);
    }
    return out;
  }

  // Reconcile remoteMedia with the remote description just applied: every m-section the server
  // sends on carries "a=msid:<participant> <media>".
  _bindRemoteMedia() {
    const sections = parseRemoteSections(this.pc.remoteDescription?.sdp ?? '');
    const now = new Map();
    for (const t of this.pc.getTransceivers()) {
      if (!t.mid || t.stopped) continue;
      const s = sections.get(t.mid);
      if (!s || s.port === 0 || !(s.direction === 'sendonly' || s.direction === 'sendrecv')) continue;
      const track = t.receiver.track;
      const participantId = s.streamId ?? null;
      const mediaId = s.trackId ?? this._guessMediaId(participantId, track);
      if (!participantId || !mediaId) continue;
      now.set(t.mid, { participantId, mediaId, kind: track.kind, mid: t.mid, track, transceiver: t });
    }
    for (const [mid, mediaId] of [...this._midBindings]) {
      if (now.get(mid)?.mediaId === mediaId) continue;
      this._midBindings.delete(mid);
      const gone = this.remoteMedia.get(mediaId);
      if (gone?.mid === mid) {
        this.remoteMedia.delete(mediaId);
        this._emit('trackremoved', gone);
      }
    }
    for (const [mid, media] of now) {
      if (this._midBindings.get(mid) === media.mediaId) continue;
      this._midBindings.set(mid, media.mediaId);
      this.remoteMedia.set(media.mediaId, media);
      this._emit('track', media);
    }
  }

  // Without an msid track id: the receiver's track id if the roster knows it, else the
  // participant's only media of that kind.
  _guessMediaId(participantId, track) {
    const media = this.participants.get(participantId)?.media ?? [];
    return (media.find((m) => m.id === track.id) ?? media.find((m) => m.kind === track.kind))?.id ?? null;
  }

  // ---- the socket, and reconnecting ------------------------------------------------------------

  // Open a socket to the URL; once open it sends `resume` (if there is a participant to resume) or
  // `join`. Events of a socket that was replaced are ignored.
  _openSocket() {
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      this._settleInitial(new DaisError('socket_closed', `cannot open ${this.url}: ${err?.message ?? err}`));
      this._finish(1006, 'bad url');
      return;
    }
    this._ws = ws;
    this._hello = null;
    const connectTimer = setTimeout(() => {
      if (this._ws === ws && ws.readyState !== WebSocket.OPEN) this._socketLost(ws, 'the server did not answer');
    }, this._connectTimeoutMs);
    ws.addEventListener('open', () => {
      clearTimeout(connectTimer);
      if (this._ws !== ws) return;
      this._lastHeard = performance.now();
      this._sendHello();
    });
    ws.addEventListener('message', (e) => {
      if (this._ws !== ws) return;
      this._lastHeard = performance.now();
      this._onMessage(e.data);
    });
    ws.addEventListener('close', (e) => {
      clearTimeout(connectTimer);
      if (this._ws === ws) this._onSocketClosed(e.code, e.reason);
    });
  }

  _sendHello() {
    if (this._resumeToken) {
      this._hello = 'resume';
      this._send({ type: 'resume', token: this._resumeToken, version: PROTOCOL_VERSION });
      return;
    }
    this._hello = 'join';
    // A participant this client had is gone (a server without resume tokens): start over cleanly.
    if (this.participantId !== null) this._dropRoom();
    const join = { type: 'join', room: this.room, name: this.name, role: this.role, version: PROTOCOL_VERSION };
    if (this._token) join.token = this._token;
    if (this.moderator) join.moderator = true;
    this._send(join);
  }

  // `join` or `resume` was refused on this socket.
  _helloFailed(error) {
    const hello = this._hello;
    this._hello = null;
    if (this._initial) {
      this._emit('error', { error });
      this._settleInitial(error);
      this.close();
      return;
    }
    if (hello === 'resume' && error.code === 'resume_failed') {
      // The server no longer holds the participant: join afresh on this socket.
      this._resumeToken = null;
      this._dropRoom();
      this._sendHello();
      return;
    }
    this._emit('error', { error });
    if (this._terminal) {
      this._finish(4000, error.code);
      return;
    }
    // `draining`, `room_full`, `internal`...: another try later, maybe on another server.
    this._socketLost(this._ws, error.code);
  }

  _onSocketClosed(code, reason) {
    this._ws = null;
    this._hello = null;
    if (this._closed) return;
    if (this._initial) {
      this._settleInitial(new DaisError('socket_closed', `socket closed before "joined" (code ${code})`));
      this._finish(code, reason);
      return;
    }
    if (this._terminal || TERMINAL_CLOSES.has(code) || !this._reconnectEnabled) {
      this._finish(code, reason);
      return;
    }
    this._startReconnect(`socket closed (${code}${reason ? `: ${reason}` : ''})`);
  }

  // Give a socket up (silent, never opened, or refused us): the client goes on as if it had closed.
  _socketLost(ws, reason) {
    if (!ws || this._ws !== ws) return;
    this._ws = null;
    try {
      ws.close();
    } catch {
      // already closing
    }
    this._onSocketClosed(1006, reason);
  }

  _startReconnect(reason) {
    const now = performance.now();
    if (!this._reconnecting) this._reconnecting = { since: now, attempt: 0, timer: 0 };
    const r = this._reconnecting;
    if (now - r.since > this._reconnectTimeoutMs) {
      this._finish(1006, `gave up reconnecting after ${Math.round((now - r.since) / 1000)} s: ${reason}`);
      return;
    }
    const delayMs = backoffMs(r.attempt);
    r.attempt += 1;
    this._emit('reconnecting', { attempt: r.attempt, delayMs, reason });
    r.timer = setTimeout(() => {
      if (!this._closed) this._openSocket();
    }, delayMs);
  }

  _endReconnect(detail) {
    if (!this._reconnecting) return;
    clearTimeout(this._reconnecting.timer);
    this._reconnecting = null;
    // Joined again as a new participant: the old one's votes are not ours.
    if (!detail?.resumed) this.voted.clear();
    this._emit('reconnected', detail);
  }

  _settleInitial(error, detail) {
    const initial = this._initial;
    if (!initial) return;
    this._initial = null;
    clearTimeout(initial.timer);
    if (error) initial.reject(error);
    else initial.resolve(detail);
  }

  // Whether a socket carries the participant now (joined or resumed on it).
  _carrying() {
    return this._ws?.readyState === WebSocket.OPEN && !this._hello && this.participantId !== null;
  }

  // Every ping interval: a ping, and the silence check.
  _tick() {
    const ws = this._ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    if (performance.now() - this._lastHeard > this._signalTimeoutMs) {
      this._socketLost(ws, `nothing from the server for ${this._signalTimeoutMs} ms`);
      return;
    }
    if (!this._carrying()) return;
    const id = ++this._pingSeq;
    this._pingsSent.set(id, performance.now());
    if (this._pingsSent.size > 10) this._pingsSent.delete(this._pingsSent.keys().next().value);
    this._send({ type: 'ping', id });
  }

  // ICE "failed", or "disconnected" for iceRestartAfterMs: restart it with a new offer. Without a
  // socket the restart waits for the resume.
  _watchIce() {
    const state = this.pc?.iceConnectionState;
    clearTimeout(this._iceTimer);
    if (state === 'failed') {
      this._restartIce();
    } else if (state === 'disconnected') {
      this._iceTimer = setTimeout(() => {
        const now = this.pc?.iceConnectionState;
        if (now === 'disconnected' || now === 'failed') this._restartIce();
      }, this._iceRestartAfterMs);
    }
  }

  _restartIce() {
    const pc = this.pc;
    if (!pc || this._closed || pc.signalingState === 'closed') return;
    if (!this._carrying()) {
      this._iceRestartWanted = true;
      return;
    }
    this._iceRestartWanted = false;
    this._emit('icerestart', { state: pc.iceConnectionState });
    pc.restartIce();
    this._wantOffer = true;
    this._enqueue(() => this._maybeOffer());
  }

  _finish(code, reason) {
    if (this._closed) return;
    this._closed = true;
    this._settleInitial(new DaisError('socket_closed', `the client closed (${code}${reason ? `: ${reason}` : ''})`));
    if (this._ws && this._ws.readyState <= WebSocket.OPEN) {
      try {
        this._ws.close(1000, 'client finished');
      } catch {
        // already closing
      }
    }
    clearInterval(this._pingTimer);
    clearTimeout(this._iceTimer);
    if (this._reconnecting) clearTimeout(this._reconnecting.timer);
    this._reconnecting = null;
    this._rejectAnswerWaiters(new DaisError('socket_closed', 'the socket closed'));
    this.pc?.close();
    this._emit('close', { code, reason });
  }
}

/** Close codes after which the client does not come back: its own leave, a frame that is not UTF-8
 * or too big, kicked, room closed, resumed on another socket. */
const TERMINAL_CLOSES = new Set([1000, 1007, 1009, 4001, 4002, 4003]);

/** Errors after which the client does not come back. */
const TERMINAL_CODES = new Set([
  'kicked', 'room_closed', 'token_required', 'token_expired', 'token_invalid', 'token_wrong_room', 'token_not_yet_valid',
  'invalid_room',
  'invalid_name', 'unsupported_version',
]);

/** Wait before reconnect attempt `n` (0-based): the first soon, then doubling from 0.5 s up to 5 s,
 * each with jitter (a random 50-100 %), so a server's thousands of viewers do not return at once. */
function backoffMs(n) {
  if (n === 0) return Math.round(Math.random() * 300);
  const ceiling = Math.min(5000, 500 * 2 ** (n - 1));
  return Math.round(ceiling * (0.5 + Math.random() / 2));
}

function defaultUrl() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${location.host}/ws`;
}

function normalizeParticipant(p) {
  return { id: p.id, name: p.name, role: p.role, media: (p.media ?? []).map((m) => ({ ...m })) };
}

/** 'video/H264' -> 'h264'. */
function mimeToCodec(mimeType) {
  return String(mimeType ?? '').replace(/^[a-z]+\//i, '').toLowerCase();
}

function sameCodec(a, b) {
  return a.mimeType.toLowerCase() === b.mimeType.toLowerCase() && a.clockRate === b.clockRate
    && (a.sdpFmtpLine ?? '') === (b.sdpFmtpLine ?? '');
}

// How to make a video transceiver send `videoCodec`: `send`, the browser's first send capability
// of that codec (for sendEncodings[0].codec), and `preferences` for setCodecPreferences(): every
// entry of that codec the browser can send first (in the browser's order, so e.g. H.264 packetization-mode=1
// before mode 0), then the rest of its codecs (other codecs, rtx, red, ulpfec) in the browser's
// order. setCodecPreferences() accepts only codecs the browser can also receive, so the entries
// come from RTCRtpReceiver.getCapabilities(); a codec it can receive but not send goes after the
// sendable entries of the same codec. Throws DaisError('codec_unsupported') when impossible.
function chooseVideoCodec(videoCodec) {
  const name = String(videoCodec).toLowerCase();
  if (!VIDEO_CODECS.includes(name)) {
    throw new DaisError('codec_unsupported',
      `unknown video codec "${videoCodec}"; expected one of ${VIDEO_CODECS.join(', ')}`);
  }
  const Sender = globalThis.RTCRtpSender;
  const Receiver = globalThis.RTCRtpReceiver;
  if (typeof Sender?.getCapabilities !== 'function' || typeof Receiver?.getCapabilities !== 'function'
    || typeof globalThis.RTCRtpTransceiver?.prototype?.setCodecPreferences !== 'function') {
    throw new DaisError('codec_unsupported',
      `this browser cannot choose a video codec (no RTCRtpSender.getCapabilities / setCodecPreferences); cannot send ${name}`);
  }
  const sendable = Sender.getCapabilities('video')?.codecs ?? [];
  const receivable = Receiver.getCapabilities('video')?.codecs ?? [];
  const isChosen = (c) => mimeToCodec(c.mimeType) === name;
  if (!sendable.some(isChosen)) {
    const can = sendableVideoCodecs();
    throw new DaisError('codec_unsupported',
      `this browser cannot send ${name} video (it can send: ${can.length ? can.join(', ') : 'none of them'})`);
  }
  const key = (c) => `${c.mimeType.toLowerCase()}|${c.clockRate}|${c.sdpFmtpLine ?? ''}`;
  const canSend = new Set(sendable.map(key));
  const byKey = new Map(receivable.map((c) => [key(c), c]));
  const first = [
    ...sendable.filter(isChosen).map((c) => byKey.get(key(c))).filter(Boolean),
    ...receivable.filter((c) => isChosen(c) && !canSend.has(key(c))),
  ];
  if (first.length === 0) {
    throw new DaisError('codec_unsupported',
      `this browser lists ${name} as sendable but not as receivable, so setCodecPreferences() cannot select it`);
  }
  return { name, send: sendable.find(isChosen), preferences: [...first, ...receivable.filter((c) => !isChosen(c))] };
}

function toDaisError(err) {
  if (err instanceof DaisError) return err;
  return new DaisError('negotiation_failed', err?.message ?? String(err));
}

/**
 * Split an SDP into its m-sections, keyed by mid.
 * @param {string} sdp
 * @returns {Map<string, {port: number, direction: string, streamId?: string, trackId?: string}>}
 */
export function parseRemoteSections(sdp) {
  const sections = [];
  let cur = null;
  for (const raw of sdp.split(/\r?\n/)) {
    const line = raw.trim();
    if (line.startsWith('m=')) {
      cur = { mid: null, port: Number(line.split(' ')[1]), direction: 'sendrecv' };
      sections.push(cur);
    } else if (!cur) {
      continue;
    } else if (line.startsWith('a=mid:')) {
      cur.mid = line.slice(6);
    } else if (/^a=(sendonly|recvonly|sendrecv|inactive)$/.test(line)) {
      cur.direction = line.slice(2);
    } else if (line.startsWith('a=msid:') || (!cur.streamId && /^a=ssrc:\d+ msid:/.test(line))) {
      const [streamId, trackId] = line.slice(line.indexOf('msid:') + 5).split(/\s+/);
      if (streamId && streamId !== '-') cur.streamId = streamId;
      if (trackId) cur.trackId = trackId;
    }
  }
  return new Map(sections.filter((s) => s.mid !== null).map((s) => [s.mid, s]));
}
