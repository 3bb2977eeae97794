// Helpers shared by the real-browser tests (scripts/browser-test.sh runs them): launching
// Debian's headless Chromium with the flags from shared/BROWSER-TESTING.md, opening one fresh
// browser context per participant, polling, and reading RTCPeerConnection.getStats() of a page.

import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join as joinPath } from 'node:path';
import { chromium } from 'playwright-core';

export const BASE = process.env.DAIS_URL;
export const MEDIA_ADDR = process.env.DAIS_MEDIA_ADDR; // "127.0.0.1:PORT", when the runner knows it
export const MEDIA_TCP_ADDR = process.env.DAIS_MEDIA_TCP_ADDR; // "127.0.0.1:PORT", or "off"
export const EXECUTABLE = process.env.CHROMIUM ?? '/usr/bin/chromium';
export const WAIT_MS = 30_000;

// shared/BROWSER-TESTING.md, plus autoplay with sound.
export const CHROMIUM_ARGS = [
  '--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection', '--autoplay-policy=no-user-gesture-required',
];

// The server embeds crates/dais-server/assets at compile time, so a binary built before the last
// edit of a page serves the old page. launchBrowser() compares what the server serves with the
// working tree; pages then get the working tree's copy of every script and style sheet that
// differs (a loud '#' line says which), so the tests exercise the client code on disk.
// DAIS_ASSETS_FROM_DISK=0 makes a stale binary a failure instead. HTML documents are never
// substituted: Chromium's Local Network Access checks give a document that did not come from the
// network no address space, and then block its WebSocket to 127.0.0.1
// (net::ERR_BLOCKED_BY_LOCAL_NETWORK_ACCESS_CHECKS); a stale page is only reported.
const ASSET_DIR = new URL('../../crates/dais-server/assets/', import.meta.url);
const ASSET_TYPES = { html: 'text/html; charset=utf-8', js: 'text/javascript; charset=utf-8', css: 'text/css; charset=utf-8' };
let staleAssets = null; // Map name -> working-tree text, for the files the server serves differently

async function checkAssets() {
  if (staleAssets) return staleAssets;
  staleAssets = new Map();
  for (const name of readdirSync(ASSET_DIR)) {
    const ext = name.split('.').pop();
    if (!(ext in ASSET_TYPES)) continue;
    const disk = readFileSync(new URL(name, ASSET_DIR), 'utf8');
    const res = await fetch(`${BASE}/assets/${name}`);
    const served = res.ok ? await res.text() : null;
    if (served !== disk) staleAssets.set(name, disk);
  }
  const stalePages = [...staleAssets.keys()].filter((name) => name.endsWith('.html'));
  if (staleAssets.size) {
    const names = [...staleAssets.keys()].join(', ');
    assert.notEqual(process.env.DAIS_ASSETS_FROM_DISK, '0',
      `the server binary serves other copies of ${names} than crates/dais-server/assets holds: rebuild it `
      + '(cargo build -p dais-server), or unset DAIS_ASSETS_FROM_DISK to test the working tree\'s pages');
    console.log(`# NOTE: the server binary is older than crates/dais-server/assets (${names} differ); `
      + 'pages get the working tree\'s scripts and styles'
      + (stalePages.length ? ` but the server's ${stalePages.join(', ')}` : '')
      + '. Rebuild (cargo build -p dais-server) to test what it embeds.');
  }
  return staleAssets;
}

// Serve the working tree's copy of stale assets to the pages of `context`.
async function routeStaleAssets(context) {
  const stale = await checkAssets();
  if (!stale.size) return;
  await context.route((url) => url.origin === new URL(BASE).origin, async (route) => {
    const path = new URL(route.request().url()).pathname;
    const name = path.startsWith('/assets/') ? path.slice(8) : null;
    if (name === null || name.endsWith('.html') || route.request().isNavigationRequest() || !stale.has(name)) {
      return route.continue();
    }
    return route.fulfill({
      status: 200,
      headers: { 'content-type': ASSET_TYPES[name.split('.').pop()], 'cache-control': 'no-cache' },
      body: stale.get(name),
    });
  });
}

/**
 * A browser for one test file; fails clearly when DAIS_URL is not set. `secure` lists origins
 * other than localhost to treat as secure, so that their pages may use the camera (a test's own
 * server on a veth address, say).
 */
export async function launchBrowser({ secure = [], args = [] } = {}) {
  assert.ok(BASE, 'DAIS_URL must name the server, e.g. http://127.0.0.1:8080 (scripts/browser-test.sh sets it)');
  await checkAssets();
  // headless: false because the flag list above already carries --headless=new; Playwright's own
  // headless mode would add its flags (and --mute-audio) on top.
  return chromium.launch({
    executablePath: EXECUTABLE, headless: false, args: [...CHROMIUM_ARGS, ...secureArgs(secure), ...args],
  });
}

/**
 * Write a WAV file (48 kHz, 16-bit mono) of `seconds` of a `hz` tone whose loudness swells and
 * fades four times a second, like syllables, at about -10 dBFS at its peak; the path. For
 * Chromium's --use-file-for-fake-audio-capture: the default fake microphone only beeps briefly
 * once a second, which no speech detector takes for speech.
 */
export function writeToneWav(hz = 440, seconds = 10) {
  const rate = 48_000;
  const n = rate * seconds;
  const buf = Buffer.alloc(44 + n * 2);
  buf.write('RIFF', 0); buf.writeUInt32LE(36 + n * 2, 4); buf.write('WAVE', 8);
  buf.write('fmt ', 12); buf.writeUInt32LE(16, 16); buf.writeUInt16LE(1, 20); buf.writeUInt16LE(1, 22);
  buf.writeUInt32LE(rate, 24); buf.writeUInt32LE(rate * 2, 28); buf.writeUInt16LE(2, 32); buf.writeUInt16LE(16, 34);
  buf.write('data', 36); buf.writeUInt32LE(n * 2, 40);
  for (let i = 0; i < n; i++) {
    const t = i / rate;
    const envelope = 0.6 + 0.4 * Math.sin(2 * Math.PI * 4 * t);
    buf.writeInt16LE(Math.round(0.32 * envelope * Math.sin(2 * Math.PI * hz * t) * 32767), 44 + i * 2);
  }
  const path = joinPath(mkdtempSync(joinPath(tmpdir(), 'dais-tone-')), `tone-${hz}.wav`);
  writeFileSync(path, buf);
  return path;
}

function secureArgs(origins) {
  return origins.length ? [`--unsafely-treat-insecure-origin-as-secure=${origins.join(',')}`] : [];
}

/**
 * A page in a fresh browser context (Playwright `contextOptions`, e.g. a viewport), collecting page
 * errors and console errors in `problems`.
 */
export async function openPage(browser, label, contextOptions = {}) {
  const context = await browser.newContext(contextOptions);
  await routeStaleAssets(context);
  await context.addInitScript(installSdpParser);
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console.error: ${m.text()}`); });
  return { label, context, page, problems, id: null };
}

/**
 * Open `path` (e.g. "/speak?room=R&name=S") in a fresh context and wait until it joined. A speaker
 * page without `video=` captures 640x360 here (the page's own default is 1280x720 in three simulcast
 * layers): the suite runs several Chromiums on two cores, and only simulcast.test.mjs needs 720p.
 * A speaker page goes straight on stage (`prejoin=0`) unless the path says otherwise.
 */
export async function join(browser, label, path, base = BASE, contextOptions = {}) {
  const p = await openPage(browser, label, contextOptions);
  const speak = path.startsWith('/speak');
  const light = speak && !/[?&]video=/.test(path);
  // Straight on stage: prejoin.test.mjs tests the preview a person gets first.
  const direct = speak && !/[?&]prejoin=/.test(path);
  await p.page.goto(base + path + (light ? '&video=640x360' : '') + (direct ? '&prejoin=0' : ''));
  try {
    await p.page.waitForFunction(() => window.dais?.participantId, null, { timeout: WAIT_MS });
  } catch (err) {
    const status = await p.page.evaluate(() => document.getElementById('status')?.textContent).catch(() => '?');
    assert.fail(`${label} did not join ${path} within ${WAIT_MS} ms (status line: ${JSON.stringify(status)}; `
      + `page problems: ${JSON.stringify(p.problems)}): ${err.message}`);
  }
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

/**
 * For every inbound-rtp entry of a page: its kind, ssrc, publisher (through the remote SDP, as in
 * `inbound()`), the codec entry its codecId names, and the remote-outbound-rtp entry its remoteId
 * names (Chromium builds that from the RTCP sender reports it receives for the stream; null when
 * none arrived yet). `now` is the page's Date.now() when the stats were read.
 */
export async function inboundDetails(page) {
  return page.evaluate(async () => {
    const pc = window.dais.pc;
    const sections = window.__sdpSections(pc.remoteDescription?.sdp ?? '');
    const midOfTrack = new Map(pc.getTransceivers().map((t) => [t.receiver.track.id, t.mid]));
    const stats = await pc.getStats();
    const now = Date.now();
    const remoteOutbound = [];
    stats.forEach((r) => { if (r.type === 'remote-outbound-rtp') remoteOutbound.push(r); });
    const out = [];
    stats.forEach((r) => {
      if (r.type !== 'inbound-rtp') return;
      const mid = r.mid ?? midOfTrack.get(r.trackIdentifier);
      const s = sections.get(mid) ?? {};
      const sr = (r.remoteId && stats.get(r.remoteId)) || remoteOutbound.find((x) => x.ssrc === r.ssrc) || null;
      const codec = r.codecId ? stats.get(r.codecId) : null;
      out.push({
        kind: r.kind, mid, ssrc: r.ssrc, active: !!s.active,
        participantId: s.participantId ?? null, mediaId: s.mediaId ?? null,
        framesDecoded: r.framesDecoded ?? 0, packetsReceived: r.packetsReceived ?? 0,
        decoderImplementation: r.decoderImplementation ?? null,
        codec: codec ? { mimeType: codec.mimeType, payloadType: codec.payloadType, sdpFmtpLine: codec.sdpFmtpLine ?? '' } : null,
        senderReport: sr ? { ...sr } : null,
        now,
      });
    });
    return out;
  });
}

/** The active streams of `kind` that a page receives from one publisher. */
export function fromSpeaker(stats, participantId, kind) {
  return stats.filter((s) => s.participantId === participantId && s.kind === kind && s.active);
}

/**
 * Assert that `viewer` gets RTCP sender reports from the server for the audio and the video of every
 * one of `speakers`, and that they carry this machine's wall clock. Chromium turns each report into
 * the remote-outbound-rtp entry that an inbound-rtp entry's remoteId names.
 *
 * For each stream: a remote-outbound-rtp entry for its ssrc with reportsSent > 0; then, polling
 * every 250 ms, a *newer* report (reportsSent grows, so reports keep coming; str0m sends them every
 * 1 s for video and every 5 s for audio), whose remoteTimestamp (the NTP time in the report) is
 * within `maxSkewMs` of the page's Date.now() when it was first seen. Returns one line per stream.
 * @returns {Promise<string[]>}
 */
export async function assertSenderReports(viewer, speakers, { maxSkewMs = 5_000, timeoutMs = 15_000 } = {}) {
  const streams = speakers.flatMap((speaker) => ['audio', 'video'].map((kind) => ({ speaker, kind })));
  const find = (stats, { speaker, kind }) => {
    const x = fromSpeaker(stats, speaker.id, kind);
    return x.length === 1 ? x[0] : null;
  };
  const first = await waitFor(`${viewer.label} has sender reports for every stream it receives`, async () => {
    const stats = await inboundDetails(viewer.page);
    const found = streams.map((s) => find(stats, s));
    return found.every((x) => x?.senderReport?.reportsSent > 0) ? found : null;
  }, timeoutMs);
  const fresh = new Array(streams.length).fill(null);
  await waitFor(`${viewer.label} gets a newer sender report for every stream`, async () => {
    const stats = await inboundDetails(viewer.page);
    streams.forEach((s, i) => {
      const x = find(stats, s);
      if (!fresh[i] && x?.senderReport?.reportsSent > first[i].senderReport.reportsSent) fresh[i] = x;
    });
    return fresh.every(Boolean);
  }, timeoutMs);
  return streams.map(({ speaker, kind }, i) => {
    const x = fresh[i];
    const sr = x.senderReport;
    assert.equal(sr.ssrc, x.ssrc, 'the report is for the ssrc the viewer receives');
    assert.equal(sr.kind, kind);
    const skew = sr.remoteTimestamp - x.now;
    assert.ok(Number.isFinite(skew) && Math.abs(skew) <= maxSkewMs,
      `${viewer.label}: ${speaker.label}'s ${kind} sender report has NTP time ${new Date(sr.remoteTimestamp).toISOString()}, `
      + `${skew} ms from now; allowed ${maxSkewMs} ms`);
    return `${speaker.label} ${kind}: reportsSent ${first[i].senderReport.reportsSent} -> ${sr.reportsSent}, `
      + `NTP time - now ${Math.round(skew)} ms, NTP time - arrival ${Math.round(sr.remoteTimestamp - sr.timestamp)} ms`;
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

/** The page's selected candidate pair: its state, the remote (server) address and the protocol. */
export async function selectedPair(page) {
  return page.evaluate(async () => {
    const stats = await window.dais.pc.getStats();
    let pair = null;
    stats.forEach((r) => {
      if (r.type === 'transport' && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId);
    });
    if (!pair) return null;
    const remote = stats.get(pair.remoteCandidateId) ?? {};
    const local = stats.get(pair.localCandidateId) ?? {};
    return {
      state: pair.state, remoteAddress: remote.address ?? remote.ip, remotePort: remote.port,
      protocol: local.protocol ?? remote.protocol,
    };
  });
}

/** The dais binary scripts/browser-test.sh runs (it exports DAIS_BIN), or the debug build. */
export const DAIS_BIN = process.env.DAIS_BIN ?? new URL('../../target/debug/dais', import.meta.url).pathname;

/**
 * Start a dais of this test's own with `args` and extra `env` (the runner's DAIS_* variables that name
 * its own server are cleared), and wait for its ready line. Returns `{ base, http, media, tcp, stop, kill }`:
 * `stop()` interrupts it (no drain), `kill(signal)` sends a signal (SIGTERM drains); both resolve once
 * it exited.
 */
export function startDais(args, env = {}) {
  const clean = { ...process.env, DAIS_MEDIA_ADDR: '', DAIS_MEDIA_TCP_ADDR: 'auto', DAIS_HTTP_ADDR: '' };
  const child = spawn(DAIS_BIN, args, { env: { ...clean, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  // Send `signal` and resolve with the exit code once the process is gone.
  const kill = (signal) => new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve(child.exitCode);
    child.once('exit', (code) => resolve(code));
    child.kill(signal);
  });
  const stop = () => kill('SIGINT');
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`dais not ready within 30 s:\n${out}`)), 30_000);
    const onData = (d) => {
      out += d.toString();
      const m = /dais ready http=(\S+) media=(\S+) tcp=(\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ base: `http://${m[1]}`, http: m[1], media: m[2], tcp: m[3], stop, kill, child, log: () => out });
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', (d) => { out += d.toString(); });
    child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`dais exited with ${code}:\n${out}`)); });
  });
}

let netnsCount = 0;

/**
 * A network namespace of its own for one browser, joined to the test's namespace by a veth pair:
 * `hostIp` is this side's address, `nsIp` the namespace's. `exec(cmd, args)` runs a command inside it
 * (e.g. iptables, tc), `remove()` deletes it. Only inside the runner's private namespace.
 */
export function makeNetns(tag) {
  assert.equal(process.env.DAIS_BROWSER_TEST_NETNS, 'inside',
    'network namespaces for browsers are only made inside the private namespace of scripts/browser-test.sh');
  netnsCount += 1;
  const n = (process.pid % 200) + netnsCount;
  const name = `dais-${tag}-${process.pid}-${netnsCount}`;
  const [outer, inner] = [`dvo${n}`, `dvi${n}`];
  const hostIp = `10.77.${n}.1`;
  const nsIp = `10.77.${n}.2`;
  const ip = (...a) => execFileSync('ip', a, { stdio: 'inherit' });
  ip('netns', 'add', name);
  ip('link', 'add', outer, 'type', 'veth', 'peer', 'name', inner, 'netns', name);
  ip('addr', 'add', `${hostIp}/24`, 'dev', outer);
  ip('link', 'set', outer, 'up');
  ip('netns', 'exec', name, 'ip', 'addr', 'add', `${nsIp}/24`, 'dev', inner);
  ip('netns', 'exec', name, 'ip', 'link', 'set', inner, 'up');
  ip('netns', 'exec', name, 'ip', 'link', 'set', 'lo', 'up');
  return {
    name, hostIp, nsIp, outer,
    exec: (cmd, args) => execFileSync('ip', ['netns', 'exec', name, cmd, ...args], { stdio: 'inherit' }),
    /** Run a command on this (the test's) side, e.g. `tc` on `outer`. */
    hostExec: (cmd, args) => execFileSync(cmd, args, { stdio: 'inherit' }),
    remove: () => { try { ip('netns', 'del', name); } catch { /* already gone */ } },
  };
}

/** A browser whose process runs inside network namespace `ns` (see makeNetns). */
export async function launchBrowserIn(ns, { secure = [] } = {}) {
  await checkAssets();
  const dir = mkdtempSync(joinPath(tmpdir(), 'dais-netns-chromium-'));
  const wrapper = joinPath(dir, 'chromium');
  writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${ns.name} ${EXECUTABLE} "$@"\n`);
  chmodSync(wrapper, 0o755);
  return chromium.launch({ executablePath: wrapper, headless: false, args: [...CHROMIUM_ARGS, ...secureArgs(secure)] });
}
