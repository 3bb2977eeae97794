// Network trouble on one viewer's own network, with real Chromium peers. The viewer's browser runs
// in a network namespace of its own, joined to the test's by a veth pair; this test's own dais listens
// on the veth address, and the speaker's browser stays in the test's namespace. iptables inside the
// viewer's namespace drops everything for a while, then lets it through again:
// - a 5 s blip: the viewer decodes again within 5 s of the restore, without reloading and as the
//   same participant, and the speaker never hears it leave.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { launchBrowser, launchBrowserIn, makeNetns, startDais, join, waitFor, sleep, inbound } from './lib.mjs';

const ROOM = `blip-${process.pid}-${Date.now().toString(36)}`;
const browsers = [];
const pages = [];
let ns;
let dais;
let dropping = false;

function drop(on) {
  for (const chain of ['INPUT', 'OUTPUT']) ns.exec('iptables', [on ? '-A' : '-D', chain, '-j', 'DROP']);
  dropping = on;
}

after(async () => {
  if (dropping) drop(false);
  for (const p of pages) {
    if (p.problems.length) console.log(`# ${p.label} page problems:\n#   ${p.problems.join('\n#   ')}`);
  }
  for (const b of browsers) await b.close();
  await dais?.stop();
  ns?.remove();
});

const framesFrom = async (viewer, speaker) => {
  const v = (await inbound(viewer.page)).filter((s) => s.participantId === speaker.id && s.kind === 'video' && s.active);
  return v.length === 1 ? v[0].framesDecoded : 0;
};

test('a viewer whose network drops for 5 s decodes again within 5 s, as the same participant', { timeout: 120_000 }, async () => {
  ns = makeNetns('viewer');
  dais = await startDais(['--http-addr', `${ns.hostIp}:0`, '--media-addr', `${ns.hostIp}:0`]);
  const speakerBrowser = await launchBrowser({ secure: [dais.base] });
  browsers.push(speakerBrowser);
  const viewerBrowser = await launchBrowserIn(ns, { secure: [dais.base] });
  browsers.push(viewerBrowser);
  const speaker = await join(speakerBrowser, 'speaker', `/speak?room=${ROOM}&name=S`, dais.base);
  pages.push(speaker);
  await speaker.page.evaluate(() => {
    window.__left = [];
    window.dais.addEventListener('participantleft', (e) => window.__left.push(e.detail.participantId));
  });
  const viewer = await join(viewerBrowser, 'viewer', `/watch?room=${ROOM}`, dais.base);
  pages.push(viewer);
  await waitFor('the viewer decodes', async () => (await framesFrom(viewer, speaker)) > 30);

  drop(true);
  await sleep(5_000);
  const before = await framesFrom(viewer, speaker);
  drop(false);
  const restored = Date.now();
  await waitFor('the viewer decodes again after the blip', async () => (await framesFrom(viewer, speaker)) > before + 10, 5_000);
  console.log(`# decoding again ${Date.now() - restored} ms after the network came back`);
  assert.equal(await viewer.page.evaluate(() => window.dais.participantId), viewer.id, 'the same participant');
  assert.deepEqual(await speaker.page.evaluate(() => window.__left), [], 'the speaker never saw the viewer leave');

  const problems = pages.flatMap((p) => p.problems.map((x) => `${p.label}: ${x}`));
  assert.deepEqual(problems, [], 'no page threw or logged an error');
});
