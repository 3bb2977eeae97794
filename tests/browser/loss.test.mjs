// Retransmissions end to end with real Chromium peers: one speaker on /speak and one viewer on
// /watch (fresh browser contexts, fake camera and microphone) against the dais server at
// $DAIS_URL. Once the viewer decodes video, an iptables rule inside the test's private network
// namespace drops 5 % of the UDP datagrams whose source port is the server's media port, so only
// server -> client traffic is lost, never speaker -> server. For LOSS_WINDOW_MS the viewer must
// keep decoding by asking for retransmissions (NACK) that the server answers from its own packet
// cache (RTX), and the speaker must see none of those NACKs: the server never forwards a viewer's
// NACK upstream, and nothing it received from the speaker was lost.
//
// The rule is only ever added inside the namespace scripts/browser-test.sh creates
// (DAIS_BROWSER_TEST_NETNS=inside); anywhere else this test fails rather than touch the
// machine's firewall. Everything asserted comes from the pages' RTCPeerConnection.getStats().

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { MEDIA_ADDR, launchBrowser, join, waitFor, sleep, inbound, outbound } from './lib.mjs';

const ROOM = `loss-${process.pid}-${Date.now().toString(36)}`;
const LOSS = 0.05;
const LOSS_WINDOW_MS = 12_000;
const MIN_FRAMES_IN_WINDOW = 100; // Chromium's fake camera delivers 20 fps here, so ~240 in the window
const MAX_SPEAKER_PLIS_IN_WINDOW = 5;

let browser;
let ruleArgs = null; // the iptables rule while it is installed
const pages = [];

after(async () => {
  removeLossRule();
  for (const p of pages) {
    if (p.problems.length) console.log(`# ${p.label} page problems:\n#   ${p.problems.join('\n#   ')}`);
  }
  await browser?.close();
});

test('the server repairs 5 % downstream loss with retransmissions and keeps NACKs from the speaker',
  { timeout: 120_000 }, async () => {
    assert.equal(process.env.DAIS_BROWSER_TEST_NETNS, 'inside',
      'this test drops packets with an iptables rule and only does so inside the private network namespace '
      + 'that scripts/browser-test.sh creates (it sets DAIS_BROWSER_TEST_NETNS=inside; it needs root and '
      + '`unshare -n`, and DAIS_NO_NETNS must not be 1). Refusing to touch the firewall of this machine.');
    const port = Number(/^[0-9.]+:(\d+)$/.exec(MEDIA_ADDR ?? '')?.[1]);
    assert.ok(port > 0, `DAIS_MEDIA_ADDR must be "127.0.0.1:PORT" (scripts/browser-test.sh sets it), got ${MEDIA_ADDR}`);

    browser = await launchBrowser();
    // One encoding, so that the speaker's one outbound video stream is the one the viewer NACKs.
    const speaker = await join(browser, 'speaker', `/speak?room=${ROOM}&name=S&simulcast=0&video=640x360`);
    pages.push(speaker);
    const viewer = await join(browser, 'viewer', `/watch?room=${ROOM}`);
    pages.push(viewer);

    const viewerVideo = async () => {
      const v = (await inbound(viewer.page))
        .filter((s) => s.participantId === speaker.id && s.kind === 'video' && s.active);
      return v.length === 1 ? v[0].raw : null;
    };
    const speakerVideo = async () => {
      const v = (await outbound(speaker.page)).filter((s) => s.kind === 'video');
      assert.equal(v.length, 1, `speaker sends one video stream: ${JSON.stringify(v)}`);
      return v[0];
    };

    await waitFor('the viewer decodes the speaker\'s video', async () => (await viewerVideo())?.framesDecoded > 30);
    // The stats Chromium exposes, once, for whoever reads the log.
    console.log(`# viewer inbound-rtp video: ${JSON.stringify(await viewerVideo())}`);
    console.log(`# speaker outbound-rtp video: ${JSON.stringify(await speakerVideo())}`);

    // The rate the fake camera actually delivers to the viewer, without loss.
    const r0 = await viewerVideo();
    await sleep(2_000);
    const r1 = await viewerVideo();
    const cleanFps = (r1.framesDecoded - r0.framesDecoded) / ((r1.timestamp - r0.timestamp) / 1000);
    console.log(`# without loss the viewer decodes ${cleanFps.toFixed(1)} frames/s`);

    const v0 = await viewerVideo();
    const s0 = await speakerVideo();
    addLossRule(port);
    try {
      for (let t = 0; t < LOSS_WINDOW_MS; t += 3_000) {
        await sleep(Math.min(3_000, LOSS_WINDOW_MS - t));
        const v = await viewerVideo();
        console.log(`# +${Math.min(t + 3_000, LOSS_WINDOW_MS) / 1000} s: viewer nacks ${v.nackCount - v0.nackCount}, `
          + `retransmissions ${(v.retransmittedPacketsReceived ?? 0) - (v0.retransmittedPacketsReceived ?? 0)}, `
          + `lost ${v.packetsLost - v0.packetsLost}, frames ${v.framesDecoded - v0.framesDecoded}`);
      }
    } finally {
      console.log(`# dropped by the rule: ${droppedByRule()} datagrams`);
      removeLossRule();
    }
    const v1 = await viewerVideo();
    const s1 = await speakerVideo();

    const d = (a, b, key) => (b[key] ?? 0) - (a[key] ?? 0);
    const nacks = d(v0, v1, 'nackCount');
    const received = d(v0, v1, 'packetsReceived');
    const lost = d(v0, v1, 'packetsLost');
    const frames = d(v0, v1, 'framesDecoded');
    // The server sent received / (1 - LOSS) datagrams of this stream, LOSS of which were dropped.
    const droppedEstimate = Math.round(received * LOSS / (1 - LOSS));
    const summary = {
      viewer: {
        nackCount: nacks, retransmittedPacketsReceived: d(v0, v1, 'retransmittedPacketsReceived'),
        packetsReceived: received, packetsLost: lost, droppedEstimate, framesDecoded: frames,
        framesDropped: d(v0, v1, 'framesDropped'), freezeCount: d(v0, v1, 'freezeCount'),
        pliCount: d(v0, v1, 'pliCount'), firCount: d(v0, v1, 'firCount'),
      },
      speaker: {
        nackCount: d(s0, s1, 'nackCount'), pliCount: d(s0, s1, 'pliCount'), firCount: d(s0, s1, 'firCount'),
        packetsSent: d(s0, s1, 'packetsSent'), retransmittedPacketsSent: d(s0, s1, 'retransmittedPacketsSent'),
        framesEncoded: d(s0, s1, 'framesEncoded'),
      },
    };
    console.log(`# during the ${LOSS_WINDOW_MS / 1000} s loss window: ${JSON.stringify(summary)}`);
    const ctx = `\nbefore: viewer ${JSON.stringify(v0)}\n  speaker ${JSON.stringify(s0)}`
      + `\nafter: viewer ${JSON.stringify(v1)}\n  speaker ${JSON.stringify(s1)}`;

    assert.ok(nacks > 0, `the viewer asked for retransmissions (nackCount grew): ${nacks}${ctx}`);
    // Chromium (156) reports retransmittedPacketsReceived on the media SSRC's inbound-rtp entry
    // once RTX is negotiated (rtxSsrc). Its packetsLost does not prove repair: it counts the media
    // packets that never arrived on the media SSRC and stays there when RTX restores them.
    assert.ok('rtxSsrc' in v1 && 'retransmittedPacketsReceived' in v1,
      `the viewer negotiated RTX for the speaker's video and Chromium reports retransmissions${ctx}`);
    const rtx = summary.viewer.retransmittedPacketsReceived;
    assert.ok(rtx > 0, `the viewer received retransmissions (retransmittedPacketsReceived grew): ${rtx}${ctx}`);
    // Every lost media packet was NACKed; the server answers each from its cache, and a lost
    // retransmission is asked for again, so nearly all of them arrive.
    assert.ok(rtx >= Math.floor(lost * 0.8),
      `retransmissions repaired the loss: ${rtx} retransmissions for ${lost} lost packets${ctx}`);
    assert.ok(frames > MIN_FRAMES_IN_WINDOW,
      `video kept decoding during the loss: ${frames} frames in ${LOSS_WINDOW_MS} ms (needs > ${MIN_FRAMES_IN_WINDOW})${ctx}`);
    assert.equal(summary.speaker.nackCount, 0, `the speaker received no NACKs during the loss window${ctx}`);
    assert.equal(summary.speaker.retransmittedPacketsSent, 0,
      `the retransmissions came from the server's cache, not from the speaker${ctx}`);
    assert.ok(summary.speaker.pliCount <= MAX_SPEAKER_PLIS_IN_WINDOW,
      `the speaker received ${summary.speaker.pliCount} PLIs during the loss window (at most ${MAX_SPEAKER_PLIS_IN_WINDOW})${ctx}`);

    for (const p of pages) assert.deepEqual(p.problems, [], `${p.label} page problems`);
  });

// ---- the loss rule -------------------------------------------------------------------------

function lossRule(port) {
  return ['INPUT', '-i', 'lo', '-p', 'udp', '--sport', String(port),
    '-m', 'statistic', '--mode', 'random', '--probability', String(LOSS), '-j', 'DROP'];
}

function iptables(args) {
  return execFileSync('iptables', ['-w', ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function addLossRule(port) {
  assert.equal(process.env.DAIS_BROWSER_TEST_NETNS, 'inside', 'refusing to add an iptables rule outside the test namespace');
  const rule = lossRule(port);
  iptables(['-I', ...rule]);
  ruleArgs = rule;
  console.log(`# added: iptables -I ${rule.join(' ')}`);
}

/** Packets the rule dropped so far, from its counter. */
function droppedByRule() {
  if (!ruleArgs) return 0;
  try {
    const out = iptables(['-L', 'INPUT', '-v', '-n', '-x']);
    const line = out.split('\n').find((l) => /\bDROP\b/.test(l) && l.includes(`spt:${ruleArgs[6]}`));
    return line ? Number(line.trim().split(/\s+/)[0]) : NaN;
  } catch (e) {
    return `unknown (${e.message})`;
  }
}

function removeLossRule() {
  if (!ruleArgs) return;
  const rule = ruleArgs;
  ruleArgs = null;
  try {
    iptables(['-D', ...rule]);
    console.log(`# removed: iptables -D ${rule.join(' ')}`);
  } catch (e) {
    console.log(`# could not remove the loss rule: ${e.stderr ?? e.message}`);
    throw e;
  }
}
