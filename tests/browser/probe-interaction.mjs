// A benchmark probe, not a test (docs/benchmarks.md, *Audience interaction at 2,000 viewers*): one
// Chromium viewer joins a room that dais-load fills, and times every chat message the generator's
// chatters write ("load INDEX UNIX_MICROSECONDS", see crates/dais-load/src/interact.rs) from its
// send to its arrival at the page's WebSocket, and counts the `reactions` messages the page gets.
// It prints one JSON line.
//
//   DAIS_URL=http://127.0.0.1:18080 node tests/browser/probe-interaction.mjs ROOM SECONDS
//
// The WebSocket is wrapped before the page's scripts run, so the page (dais.js) is unchanged.

import { launchBrowser, openPage, sleep, BASE } from './lib.mjs';

const [room = 'load', seconds = '20'] = process.argv.slice(2);
const browser = await launchBrowser();
try {
  const p = await openPage(browser, 'probe');
  await p.page.addInitScript(() => {
    window.__probe = { chat: [], reactions: 0, other: 0 };
    const Native = window.WebSocket;
    window.WebSocket = class extends Native {
      constructor(...args) {
        super(...args);
        this.addEventListener('message', (e) => {
          if (typeof e.data !== 'string') return;
          const now = Date.now();
          let m;
          try { m = JSON.parse(e.data); } catch { return; }
          if (m.type === 'chat') {
            const sent = /^load \d+ (\d+)$/.exec(m.text ?? '');
            if (sent) window.__probe.chat.push(now - Number(sent[1]) / 1000);
          } else if (m.type === 'reactions') {
            window.__probe.reactions += 1;
          } else {
            window.__probe.other += 1;
          }
        });
      }
    };
  });
  await p.page.goto(`${BASE}/watch?room=${encodeURIComponent(room)}&name=probe`);
  await p.page.waitForFunction(() => window.dais?.participantId, null, { timeout: 30_000 });
  // Count from now: the history sent on join is not latency.
  await p.page.evaluate(() => { window.__probe.chat.length = 0; window.__probe.reactions = 0; });
  await sleep(Number(seconds) * 1000);
  const got = await p.page.evaluate(() => ({ ...window.__probe, chat: [...window.__probe.chat] }));
  const decoded = await p.page.evaluate(async () => {
    let frames = 0;
    (await window.dais.pc.getStats()).forEach((r) => { if (r.type === 'inbound-rtp' && r.kind === 'video') frames += r.framesDecoded ?? 0; });
    return frames;
  });
  const sorted = got.chat.sort((a, b) => a - b);
  const at = (q) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : null);
  console.log(JSON.stringify({
    seconds: Number(seconds),
    chats: sorted.length,
    chat_ms: { p50: at(0.5), p95: at(0.95), p99: at(0.99), max: sorted.at(-1) ?? null },
    reactions_per_s: got.reactions / Number(seconds),
    video_frames_decoded: decoded,
    problems: p.problems,
  }));
} catch (e) {
  console.log(JSON.stringify({ error: e.message }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
