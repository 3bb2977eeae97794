// Helpers shared by the real-browser tests (scripts/browser-test.sh runs them): launching
// Debian's headless Chromium with the flags from shared/BROWSER-TESTING.md, opening one fresh
// browser context per participant, polling, and reading RTCPeerConnection.getStats() of a page.

import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

export const BASE = process.env.DAIS_URL;
export const MEDIA_ADDR = process.env.DAIS_MEDIA_ADDR; // "127.0.0.1:PORT", when the runner knows it
export const EXECUTABLE = process.env.CHROMIUM ?? '/usr/bin/chromium';
export const WAIT_MS = 30_000;

// shared/BROWSER-TESTING.md, plus autoplay with sound.
export const CHROMIUM_ARGS = [
  '--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection', '--autoplay-policy=no-user-gesture-required',
];

/** A browser for one test file; fails clearly when DAIS_URL is not set. */
export async function launchBrowser() {
  assert.ok(BASE, 'DAIS_URL must name the server, e.g. http://127.0.0.1:8080 (scripts/browser-test.sh sets it)');
  // headless: false because the flag list above already carries --headless=new; Playwright's own
  // headless mode would add its flags (and --mute-audio) on top.
  return chromium.launch({ executablePath: EXECUTABLE, headless: false, args: CHROMIUM_ARGS });
}

/** A page in a fresh browser context, collecting page errors and console errors in `problems`. */
export async function openPage(browser, label) {
  const context = await browser.newContext();
  await context.addInitScript(installSdpParser);
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console.error: ${m.text()}`); });
  return { label, context, page, problems, id: null };
}

/** Open `path` (e.g. "/speak?room=R&name=S") in a fresh context and wait until it joined. */
export async function join(browser, label, path) {
  const p = await openPage(browser, label);
  await p.page.goto(BASE + path);
  await p.page.waitForFunction(() => window.dais?.participantId, null, { timeout: WAIT_MS });
  p.id = await p.page.evaluate(() => window.dais.participantId);
  return p;
}

/** Poll `check` until it returns something truthy; fail with `what` after `timeoutMs`. */
export async function waitFor(what, check, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  let lastError;
  while (Date.now() < deadline) {
    try {
      const v = await check();
      if (v) return v;
    } catch (e) {
      lastError = e;
    }
    await sleep(250);
  }
  assert.fail(`timed out after ${timeoutMs} ms waiting until ${what}${lastError ? ` (last error: ${lastError.message})` : ''}`);
}

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

// Installed in every page before its scripts: m-sections of an SDP by mid, with the msid's
// participant and media ids. Kept independent of dais.js on purpose.
export function installSdpParser() {
  window.__sdpSections = (sdp) => {
    const out = new Map();
    let cur = null;
    for (const raw of sdp.split(/\r?\n/)) {
      const line = raw.trim();
      if (line.startsWith('m=')) { cur = { port: Number(line.split(' ')[1]), direction: 'sendrecv' }; continue; }
      if (!cur) continue;
      if (line.startsWith('a=mid:')) out.set(line.slice(6), cur);
      else if (/^a=(sendonly|recvonly|sendrecv|inactive)$/.test(line)) cur.direction = line.slice(2);
      else if (line.startsWith('a=msid:')) [cur.participantId, cur.mediaId] = line.slice(7).split(/\s+/);
    }
    for (const s of out.values()) s.active = s.port !== 0 && (s.direction === 'sendonly' || s.direction === 'sendrecv');
    return out;
  };
}

/**
 * inbound-rtp entries of a page, each attributed to a publisher through the remote SDP. `raw`
 * carries the whole getStats() entry as Chromium reports it.
 */
export async function inbound(page) {
  return page.evaluate(async () => {
    const pc = window.dais.pc;
    const sections = window.__sdpSections(pc.remoteDescription?.sdp ?? '');
    const midOfTrack = new Map(pc.getTransceivers().map((t) => [t.receiver.track.id, t.mid]));
    const out = [];
    (await pc.getStats()).forEach((r) => {
      if (r.type !== 'inbound-rtp') return;
      const mid = r.mid ?? midOfTrack.get(r.trackIdentifier);
      const s = sections.get(mid) ?? {};
      out.push({
        kind: r.kind, mid, ssrc: r.ssrc, active: !!s.active,
        participantId: s.participantId ?? null, mediaId: s.mediaId ?? null,
        framesDecoded: r.framesDecoded ?? 0, packetsReceived: r.packetsReceived ?? 0,
        raw: { ...r },
      });
    });
    return out;
  });
}

/** outbound-rtp entries of a page, as Chromium reports them. */
export async function outbound(page) {
  return page.evaluate(async () => {
    const out = [];
    (await window.dais.pc.getStats()).forEach((r) => { if (r.type === 'outbound-rtp') out.push({ ...r }); });
    return out;
  });
}

/** bytesSent of a page's outbound-rtp entries, summed by kind. */
export async function outboundBytes(page) {
  const out = { audio: 0, video: 0 };
  for (const r of await outbound(page)) out[r.kind] += r.bytesSent ?? 0;
  return out;
}

/** The page's selected candidate pair: its state and the remote (server) address. */
export async function selectedPair(page) {
  return page.evaluate(async () => {
    const stats = await window.dais.pc.getStats();
    let pair = null;
    stats.forEach((r) => {
      if (r.type === 'transport' && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId);
    });
    if (!pair) return null;
    const remote = stats.get(pair.remoteCandidateId) ?? {};
    return { state: pair.state, remoteAddress: remote.address ?? remote.ip, remotePort: remote.port };
  });
}
