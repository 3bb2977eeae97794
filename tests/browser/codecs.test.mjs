// Video codec choice end to end with real Chromium peers. For each of H.264, VP9 and AV1: one
// speaker on /speak?...&codec=X and one viewer on /watch, in their own room and browser contexts,
// against the dais server at $DAIS_URL. What the viewer decodes must be X (the codec stats entry
// that its inbound-rtp video entry's codecId names), the speaker must send X and show it on its own
// tile, audio must flow, and every stream the viewer receives must carry RTCP sender reports from
// the server (remote-outbound-rtp), which browsers need to keep audio and video in sync.
//
// No codec is skipped: each test first asks the speaker's page which video codecs Chromium can send
// (RTCRtpSender.getCapabilities). A codec it can send must work end to end; one it cannot send must
// make publish() fail with DaisError codec_unsupported, shown on the status line. Debian's
// Chromium 156 sends all of them (VP8 and VP9 with libvpx, H.264 with OpenH264, AV1 with libaom).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  BASE, launchBrowser, openPage, join, waitFor, sleep, inboundDetails, outbound, fromSpeaker, assertSenderReports,
} from './lib.mjs';

const RUN = `${process.pid}-${Date.now().toString(36)}`;
const FRAMES = 30;
const DECODE_TIMEOUT_MS = 30_000;
const MIME = { vp8: 'video/VP8', h264: 'video/H264', vp9: 'video/VP9', av1: 'video/AV1' };

let browser;
const pages = [];

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  for (const p of pages) {
    if (p.problems.length) console.log(`# ${p.label} page problems:\n#   ${p.problems.join('\n#   ')}`);
  }
  await browser?.close();
});

for (const codec of ['h264', 'vp9', 'av1']) {
  test(`a speaker asking for ${codec} sends ${MIME[codec]} and the viewer decodes it`, { timeout: 90_000 }, async () => {
    const room = `codecs-${codec}-${RUN}`;
    // AV1 is encoded in software at one resolution: 640x360 keeps it quick on a 2-core machine.
    const size = codec === 'av1' ? '&video=640x360' : '';
    const speaker = await join(browser, `speaker-${codec}`, `/speak?room=${room}&name=S&codec=${codec}${size}`);
    pages.push(speaker);
    try {
      const sendable = await speaker.page.evaluate(() =>
        RTCRtpSender.getCapabilities('video').codecs.map((c) => c.mimeType.toLowerCase()));
      console.log(`# Chromium can send: ${[...new Set(sendable)].join(', ')}`);
      if (!sendable.includes(MIME[codec].toLowerCase())) {
        await assertRefused(speaker, codec);
        return;
      }

      const viewer = await join(browser, `viewer-${codec}`, `/watch?room=${room}`);
      pages.push(viewer);
      try {
        await assertDecodes(speaker, viewer, codec);
      } finally {
        await viewer.context.close();
      }
    } finally {
      await speaker.context.close();
    }
  });
}

test('publish() refuses a codec it does not know with DaisError codec_unsupported', { timeout: 60_000 }, async () => {
  const speaker = await join(browser, 'speaker-h265', `/speak?room=codecs-bad-${RUN}&name=S&codec=h265`);
  pages.push(speaker);
  try {
    await assertRefused(speaker, 'h265');
  } finally {
    await speaker.context.close();
  }
});

test('the landing page and the /speak join form carry a video codec choice, under Advanced', { timeout: 60_000 }, async () => {
  const room = `codecs-form-${RUN}`;
  const landing = await openPage(browser, 'landing');
  pages.push(landing);
  try {
    const { page } = landing;
    await page.goto(`${BASE}/`);
    const select = page.locator('#enter select[name=codec]');
    assert.deepEqual(await select.locator('option').evaluateAll((os) => os.map((o) => o.value)),
      ['', 'vp8', 'h264', 'vp9', 'av1']);
    assert.equal(await select.inputValue(), '', 'the default is auto');
    assert.equal(await select.locator('option:checked').textContent(), 'auto');
    await page.check('input[name=role][value=viewer]');
    assert.equal(await select.isVisible(), false, 'viewers get no codec choice');
    await page.check('input[name=role][value=speaker]');
    assert.equal(await select.isVisible(), false, 'the codec choice is folded away under Advanced');
    await page.click('#enter details.advanced summary');
    assert.equal(await select.isVisible(), true, 'speakers get a codec choice under Advanced');
    await page.fill('input[name=room]', room);
    await page.fill('input[name=name]', 'F');
    await select.selectOption('vp9');
    await Promise.all([page.waitForURL(/\/speak\?/), page.click('#enter button[type=submit]')]);
    assert.equal(new URL(page.url()).searchParams.get('codec'), 'vp9', page.url());
    // A person from the landing page gets the preview first, then goes on stage.
    await page.click('#go-live');
    const published = await waitFor('the speaker from the landing page publishes', () =>
      page.evaluate(() => window.dais?.publishedCodecs?.video ?? null));
    assert.equal(published, 'vp9');

    // /speak without a name shows its join form, keeping the codec of the query.
    await page.goto(`${BASE}/speak?room=${room}&codec=av1`);
    await page.waitForSelector('#join-form:not([hidden])');
    assert.equal(await page.inputValue('#join-form select[name=codec]'), 'av1');
    assert.equal(await page.isVisible('#join-form select[name=codec]'), true, 'a codec from the URL stays in sight');
  } finally {
    await landing.context.close();
  }
});

test('no page threw or logged an error', () => {
  for (const p of pages) assert.deepEqual(p.problems, [], `${p.label} page problems`);
});

// ---- helpers -------------------------------------------------------------------------------

async function assertDecodes(speaker, viewer, codec) {
  const started = Date.now();
  const video = await waitFor(`the viewer decodes ${FRAMES} frames of ${codec}`, async () => {
    const v = fromSpeaker(await inboundDetails(viewer.page), speaker.id, 'video');
    return v.length === 1 && v[0].framesDecoded > FRAMES ? v[0] : null;
  }, DECODE_TIMEOUT_MS);
  const took = Date.now() - started;
  assert.ok(video.codec, `inbound-rtp video has a codec entry: ${JSON.stringify(video)}`);
  assert.equal(video.codec.mimeType.toLowerCase(), MIME[codec].toLowerCase(),
    `viewer decodes ${MIME[codec]}, not ${video.codec.mimeType}`);

  // The speaker: publish() resolved with the codec, outbound-rtp says it, the own tile shows it,
  // and the server told the room (roster `codec` of the video media).
  const published = await speaker.page.evaluate(() => window.dais.publishedCodecs);
  assert.equal(published.video, codec, `publish() resolved with video ${codec}: ${JSON.stringify(published)}`);
  assert.equal(published.audio, 'opus');
  const sent = await sentVideoCodec(speaker.page);
  assert.equal(sent.mimeType.toLowerCase(), MIME[codec].toLowerCase(), `speaker sends ${MIME[codec]}: ${JSON.stringify(sent)}`);
  const tile = await waitFor(`the speaker's tile shows the codec it sends`, () => speaker.page.evaluate(() => {
    const node = document.querySelector('.tile[data-local] .codec');
    return node?.dataset.codecSource === 'sending' ? { codec: node.dataset.codec, text: node.textContent } : null;
  }), 10_000);
  assert.deepEqual(tile, { codec, text: codec.toUpperCase() });
  const roster = await viewer.page.evaluate((id) => window.dais.participants.get(id)?.media ?? [], speaker.id);
  const announced = roster.find((m) => m.kind === 'video')?.codec;
  assert.equal(announced, codec, `the server announces the speaker's video as ${codec}: ${JSON.stringify(roster)}`);

  // Audio flows.
  const a1 = fromSpeaker(await inboundDetails(viewer.page), speaker.id, 'audio');
  assert.equal(a1.length, 1, 'the viewer receives one audio stream');
  await sleep(1_500);
  const a2 = fromSpeaker(await inboundDetails(viewer.page), speaker.id, 'audio');
  assert.ok(a2[0].packetsReceived > a1[0].packetsReceived,
    `audio packetsReceived grows: ${a1[0].packetsReceived} -> ${a2[0].packetsReceived}`);

  // Sender reports for both streams.
  const reports = (await assertSenderReports(viewer, [speaker])).join('; ');
  const v2 = fromSpeaker(await inboundDetails(viewer.page), speaker.id, 'video')[0];
  console.log(`# ${codec}: viewer decoded ${video.framesDecoded} frames ${took} ms after joining `
    + `(${v2.framesDecoded} by now) as ${video.codec.mimeType} ${video.codec.sdpFmtpLine}`
    + `${video.decoderImplementation ? ` [${video.decoderImplementation}]` : ''}; speaker sends ${sent.mimeType} ${sent.sdpFmtpLine} [${sent.encoderImplementation}]; `
    + `sender reports: ${reports}`);
}

async function assertRefused(speaker, codec) {
  const status = await waitFor(`the speaker's status line reports that ${codec} cannot be published`, () =>
    speaker.page.evaluate(() => {
      const node = document.getElementById('status');
      return node?.dataset.tone === 'error' && /Could not publish/.test(node.textContent) ? node.textContent : null;
    }), 10_000);
  assert.match(status, /codec_unsupported/, status);
  assert.match(status, new RegExp(codec), status);
  const transceivers = await speaker.page.evaluate(() => window.dais.pc.getTransceivers().length);
  assert.equal(transceivers, 0, 'a refused publish() leaves no transceiver behind');
  const again = await speaker.page.evaluate(async (videoCodec) => {
    try {
      // The camera stream the page previews (publish() never took it).
      const stream = document.querySelector('.tile[data-local] video').srcObject;
      await window.dais.publish(stream, { videoCodec });
      return null;
    } catch (e) {
      return { name: e.name, code: e.code, message: e.message };
    }
  }, codec);
  assert.equal(again?.name, 'DaisError', JSON.stringify(again));
  assert.equal(again.code, 'codec_unsupported');
  console.log(`# ${codec}: publish() refused: ${again.message}`);
}

async function sentVideoCodec(page) {
  const video = await waitFor('the speaker sends video', async () => {
    const v = (await outbound(page)).filter((r) => r.kind === 'video' && r.packetsSent > 0);
    // VP8 and H.264 go out as simulcast: one outbound-rtp per layer, all in the one codec.
    assert.ok(new Set(v.map((r) => r.codecId)).size <= 1, `every layer in one codec: ${JSON.stringify(v.map((r) => r.codecId))}`);
    return v.length >= 1 ? v[0] : null;
  }, 10_000);
  const codec = await page.evaluate(async (id) => {
    const c = (await window.dais.pc.getStats()).get(id);
    return c ? { mimeType: c.mimeType, sdpFmtpLine: c.sdpFmtpLine ?? '' } : null;
  }, video.codecId);
  assert.ok(codec, `outbound-rtp video names codec ${video.codecId}`);
  return { ...codec, encoderImplementation: video.encoderImplementation };
}

// A client that only reorders its offer (setCodecPreferences, no pinned encoding) must get its
// favourite too: browsers send with the first codec of the ANSWER, so the server has to answer in
// the offerer's order. Driven with a bare RTCPeerConnection and WebSocket, not dais.js.
test('the server answers in the offerer\'s codec order (setCodecPreferences alone is enough)', { timeout: 60_000 }, async () => {
  const p = await openPage(browser, 'raw-h264');
  pages.push(p);
  await p.page.goto(BASE + '/');
  const result = await p.page.evaluate(async ({ room }) => {
    const ws = new WebSocket(`${location.origin.replace('http', 'ws')}/ws`);
    const inbox = [];
    const waiters = [];
    ws.onmessage = (e) => {
      const m = JSON.parse(e.data);
      const i = waiters.findIndex((w) => w.type === m.type);
      if (i >= 0) waiters.splice(i, 1)[0].resolve(m); else inbox.push(m);
    };
    const next = (type) => new Promise((resolve) => {
      const i = inbox.findIndex((m) => m.type === type);
      if (i >= 0) resolve(inbox.splice(i, 1)[0]); else waiters.push({ type, resolve });
    });
    await new Promise((r) => { ws.onopen = r; });
    ws.send(JSON.stringify({ type: 'join', room, name: 'raw', role: 'speaker', version: 1 }));
    await next('joined');
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
    const stream = await navigator.mediaDevices.getUserMedia({ video: true });
    const tr = pc.addTransceiver(stream.getVideoTracks()[0], { direction: 'sendonly' });
    const caps = RTCRtpReceiver.getCapabilities('video').codecs;
    const h264 = caps.filter((c) => c.mimeType === 'video/H264');
    tr.setCodecPreferences([...h264, ...caps.filter((c) => c.mimeType !== 'video/H264')]);
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((r) => { if (pc.iceGatheringState === 'complete') r(); else pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r(); });
    ws.send(JSON.stringify({ type: 'offer', sdp: pc.localDescription.sdp }));
    const answer = await next('answer');
    await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
    const lines = answer.sdp.split(/\r?\n/);
    const firstPt = lines.find((l) => l.startsWith('m=video')).split(' ')[3];
    const firstCodec = lines.find((l) => l.startsWith(`a=rtpmap:${firstPt} `)).split(' ')[1].split('/')[0];
    let sent = null;
    for (let i = 0; i < 100 && !sent; i++) {
      await new Promise((r) => setTimeout(r, 100));
      const stats = await pc.getStats();
      stats.forEach((s) => {
        if (s.type === 'outbound-rtp' && s.kind === 'video' && s.codecId && (s.framesEncoded ?? 0) > 5) sent = stats.get(s.codecId)?.mimeType;
      });
    }
    ws.close();
    pc.close();
    return { firstCodec, sent };
  }, { room: `codecs-order-${RUN}` });
  assert.equal(result.firstCodec.toUpperCase(), 'H264', `the answer lists ${result.firstCodec} first`);
  assert.equal(result.sent, 'video/H264', `the browser sends ${result.sent}`);
});
