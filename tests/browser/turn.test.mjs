// TURN interop with a real TURN server: Debian's coturn, in `use-auth-secret` mode (TURN REST
// credentials), on loopback inside the test namespace, listening on TCP only. This test starts its
// own coturn and its own dais (target/debug/dais, or $DAIS_BIN) configured with the TURN URL and the
// shared secret, so `joined` carries minted TURN credentials. A Chromium viewer that may use relay
// candidates only (iceTransportPolicy "relay") and reaches coturn over TCP must get the speaker's media
// through the relay and decode it: its selected candidate pair's local candidate is a relay one,
// allocated over TCP. A Chromium speaker publishes normally.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { existsSync } from 'node:fs';
import { launchBrowser, openPage, waitFor, inbound, WAIT_MS } from './lib.mjs';

const ROOM = `turn-${process.pid}-${Date.now().toString(36)}`;
const SECRET = `turn-secret-${process.pid}-${Date.now()}`;
const DAIS_BIN = process.env.DAIS_BIN ?? new URL('../../target/debug/dais', import.meta.url).pathname;
const children = [];
let browser;
const pages = [];

after(async () => {
  for (const p of pages) {
    if (p.problems.length) console.log(`# ${p.label} page problems:\n#   ${p.problems.join('\n#   ')}`);
  }
  await browser?.close();
  for (const c of children) c.kill('SIGKILL');
});

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

/** Spawn `cmd`; resolve with the first stdout line matching `ready` (and keep the process). */
function start(cmd, args, env, ready, what) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    let out = '';
    const timer = setTimeout(() => reject(new Error(`${what} not ready within 20 s:\n${out}`)), 20_000);
    const onData = (d) => {
      out += d.toString();
      const m = out.match(ready);
      if (m) { clearTimeout(timer); resolve(m); }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', (d) => { out += d.toString(); });
    child.on('exit', (code) => reject(new Error(`${what} exited with ${code}:\n${out}`)));
  });
}

test('a viewer whose only path is a TURN relay over TCP (coturn) decodes the speaker', { timeout: 120_000 }, async () => {
  const turnserver = ['/usr/bin/turnserver', '/usr/sbin/turnserver'].find(existsSync);
  assert.ok(turnserver, 'coturn is installed (scripts/browser-test.sh installs it: apt-get install coturn)');
  assert.ok(existsSync(DAIS_BIN), `the dais binary exists at ${DAIS_BIN}`);
  const turnPort = await freePort();
  await start(turnserver, [
    '-n', '--listening-ip=127.0.0.1', '--relay-ip=127.0.0.1', `--listening-port=${turnPort}`,
    '--no-udp', '--no-tls', '--no-dtls', '--no-cli', '--use-auth-secret', `--static-auth-secret=${SECRET}`,
    '--realm=dais.test', '--allow-loopback-peers', '--no-multicast-peers', '--fingerprint',
    '--min-port=49300', '--max-port=49400', '--log-file=stdout', '--simple-log', '--verbose',
  ], {}, /listener opened on|Total General servers|Total auth threads/i, 'coturn');
  const turnUrl = `turn:127.0.0.1:${turnPort}?transport=tcp`;
  const [, http] = await start(DAIS_BIN, ['--http-addr', '127.0.0.1:0', '--media-addr', '127.0.0.1:0'],
    { DAIS_TURN_URLS: turnUrl, DAIS_TURN_SECRET: SECRET, DAIS_ADMIN_KEY: '', DAIS_MEDIA_TCP_ADDR: 'auto' },
    /dais ready http=([0-9.]+:\d+) media=/, 'dais');
  const base = `http://${http}`;

  browser = await launchBrowser();
  const speaker = await openPage(browser, 'speaker');
  pages.push(speaker);
  await speaker.page.goto(`${base}/speak?room=${ROOM}&name=S&video=640x360&prejoin=0`);
  await speaker.page.waitForFunction(() => window.dais?.participantId, null, { timeout: WAIT_MS });
  speaker.id = await speaker.page.evaluate(() => window.dais.participantId);

  const viewer = await openPage(browser, 'relay-viewer');
  pages.push(viewer);
  await viewer.page.goto(`${base}/`);
  const joined = await viewer.page.evaluate(async (room) => {
    const { DaisClient } = await import('/assets/dais.js');
    const client = new DaisClient({ room, name: 'relayed', role: 'viewer', rtcConfig: { iceTransportPolicy: 'relay' } });
    client.addEventListener('track', (e) => {
      const v = document.createElement('video');
      v.muted = true;
      v.autoplay = true;
      v.srcObject = new MediaStream([e.detail.track]);
      document.body.append(v);
    });
    window.dais = client;
    const j = await client.join();
    return { participantId: j.participantId, iceServers: client.pc.getConfiguration().iceServers };
  }, ROOM);
  viewer.id = joined.participantId;
  assert.equal(joined.iceServers.length, 1, `joined carried the TURN server: ${JSON.stringify(joined.iceServers)}`);
  assert.deepEqual(joined.iceServers[0].urls, [turnUrl]);
  assert.match(joined.iceServers[0].username, new RegExp(`^\\d+:${viewer.id}$`), 'a minted TURN REST user name');

  const frames = await waitFor('the relayed viewer decodes more than 60 frames', async () => {
    const v = (await inbound(viewer.page)).filter((s) => s.participantId === speaker.id && s.kind === 'video' && s.active);
    return v.length === 1 && v[0].framesDecoded > 60 ? v[0].framesDecoded : null;
  }, 60_000);
  const local = await viewer.page.evaluate(async () => {
    const stats = await window.dais.pc.getStats();
    let pair = null;
    stats.forEach((r) => { if (r.type === 'transport' && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId); });
    return pair ? stats.get(pair.localCandidateId) : null;
  });
  console.log(`# through coturn: ${frames} frames decoded; local candidate ${JSON.stringify(local)}`);
  assert.equal(local?.candidateType, 'relay', 'the viewer runs on a relay candidate');
  assert.equal(local?.relayProtocol, 'tcp', 'allocated over TCP');

  const problems = pages.flatMap((p) => p.problems.map((x) => `${p.label}: ${x}`));
  assert.deepEqual(problems, [], 'no page threw or logged an error');
});
