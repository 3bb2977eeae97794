// ICE over TCP with real Chromium peers, for clients whose network blocks UDP. While an iptables
// rule inside the test's private network namespace drops every UDP datagram, a speaker on /speak and
// a viewer on /watch must connect to the server's passive TCP candidate and exchange media over it:
// their selected candidate pairs say `tcp`, on the server's TCP media address, and the viewer decodes
// video. Then the rule goes, and a second viewer joins the same room over UDP (UDP outranks TCP):
// the room mixes a TCP viewer, a UDP viewer and a TCP speaker, and both viewers keep decoding.
//
// The rule is only ever added inside the namespace scripts/browser-test.sh creates
// (DAIS_BROWSER_TEST_NETNS=inside); anywhere else this test fails rather than touch the machine's
// firewall.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { MEDIA_ADDR, MEDIA_TCP_ADDR, launchBrowser, join, waitFor, inbound, selectedPair } from './lib.mjs';

const ROOM = `tcp-${process.pid}-${Date.now().toString(36)}`;
const RULES = [['OUTPUT', '-p', 'udp', '-j', 'DROP'], ['INPUT', '-p', 'udp', '-j', 'DROP']];

let browser;
let blocking = false;
const pages = [];

function iptables(action, rule) {
  execFileSync('iptables', [action, ...rule], { stdio: 'inherit' });
}

function blockUdp() {
  for (const r of RULES) iptables('-A', r);
  blocking = true;
}

function unblockUdp() {
  if (!blocking) return;
  for (const r of RULES) iptables('-D', r);
  blocking = false;
}

after(async () => {
  unblockUdp();
  for (const p of pages) {
    if (p.problems.length) console.log(`# ${p.label} page problems:\n#   ${p.problems.join('\n#   ')}`);
  }
  await browser?.close();
});

const videoFrom = async (viewer, speaker) => {
  const v = (await inbound(viewer.page)).filter((s) => s.participantId === speaker.id && s.kind === 'video' && s.active);
  return v.length === 1 ? v[0].framesDecoded : 0;
};

test('with UDP blocked a speaker and a viewer use TCP; a UDP viewer joins the same room', { timeout: 120_000 }, async () => {
  assert.equal(process.env.DAIS_BROWSER_TEST_NETNS, 'inside',
    'this test drops all UDP with iptables and only does so inside the private network namespace that '
    + 'scripts/browser-test.sh creates (DAIS_BROWSER_TEST_NETNS=inside). Refusing to touch the firewall of this machine.');
  assert.match(MEDIA_TCP_ADDR ?? '', /^[0-9.]+:\d+$/, `the server listens for ICE over TCP (DAIS_MEDIA_TCP_ADDR=${MEDIA_TCP_ADDR})`);

  browser = await launchBrowser();
  blockUdp();
  const speaker = await join(browser, 'speaker', `/speak?room=${ROOM}&name=S`);
  pages.push(speaker);
  const tcpViewer = await join(browser, 'tcp-viewer', `/watch?room=${ROOM}`);
  pages.push(tcpViewer);
  const frames = await waitFor('the TCP viewer decodes more than 60 frames', async () => {
    const n = await videoFrom(tcpViewer, speaker);
    return n > 60 ? n : null;
  }, 45_000);
  console.log(`# over TCP: ${frames} frames decoded`);
  for (const p of [speaker, tcpViewer]) {
    const pair = await selectedPair(p.page);
    assert.equal(pair?.state, 'succeeded', `${p.label}: ${JSON.stringify(pair)}`);
    assert.equal(pair.protocol, 'tcp', `${p.label} runs on a TCP candidate pair: ${JSON.stringify(pair)}`);
    assert.equal(`${pair.remoteAddress}:${pair.remotePort}`, MEDIA_TCP_ADDR, `${p.label} talks to the TCP media address`);
  }

  unblockUdp();
  const udpViewer = await join(browser, 'udp-viewer', `/watch?room=${ROOM}`);
  pages.push(udpViewer);
  await waitFor('the UDP viewer decodes the TCP speaker', async () => (await videoFrom(udpViewer, speaker)) > 30);
  const pair = await selectedPair(udpViewer.page);
  assert.equal(pair?.protocol, 'udp', `UDP wins where it works: ${JSON.stringify(pair)}`);
  assert.equal(`${pair.remoteAddress}:${pair.remotePort}`, MEDIA_ADDR);
  const before = await videoFrom(tcpViewer, speaker);
  await waitFor('the TCP viewer keeps decoding beside the UDP one', async () => (await videoFrom(tcpViewer, speaker)) > before + 30);

  const problems = pages.flatMap((p) => p.problems.map((x) => `${p.label}: ${x}`));
  assert.deepEqual(problems, [], 'no page threw or logged an error');
});
