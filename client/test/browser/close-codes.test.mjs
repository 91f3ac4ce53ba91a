// The close codes a browser sees (§2.3): headless Chromium, a plain WebSocket on the page, the
// real release binary. The server sends its close frame and waits for the browser's answer
// before dropping the connection, so the page's CloseEvent carries the code, not 1006.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { MessagingServer, launchBrowser, openPage, waitUntil } from './harness.mjs';

const CHURCH = 'CLOSE';
// Small, so that the flood below overflows the stalled page's queue soon after the kernel
// buffers between the server and Chromium are full.
const QUEUE_BYTES = 64 * 1024;

let server;
let browser;

before(async () => {
  server = await new MessagingServer({ env: { SOCKET_QUEUE_BYTES: String(QUEUE_BYTES) } }).start();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.dispose();
});

/** A page on the server's origin holding one WebSocket; resolves with its socket id. The page
 *  records what it receives and its CloseEvent in `window.probe`. */
async function openSocketPage() {
  const page = await openPage(browser.context, `${server.origin}/health`);
  const socketId = await page.evaluate((url) => new Promise((resolve, reject) => {
    const probe = { frames: 0, close: null, socketId: null };
    window.probe = probe;
    const ws = new WebSocket(url);
    ws.onopen = () => ws.send('getId');
    ws.onmessage = (event) => {
      probe.frames += 1;
      const frame = JSON.parse(event.data);
      if (frame.action === 'socketId' && !probe.socketId) {
        probe.socketId = frame.data;
        resolve(frame.data);
      }
    };
    ws.onerror = () => reject(new Error('websocket error before the socket id'));
    ws.onclose = (event) => {
      probe.close = { code: event.code, reason: event.reason, wasClean: event.wasClean };
    };
    window.ws = ws;
  }), server.socketPortUrl);
  return { page, socketId };
}

/** The page's CloseEvent, once it has one. */
async function closeEvent(page) {
  await page.waitForFunction(() => window.probe.close !== null, null, { timeout: 20000 });
  return page.evaluate(() => window.probe.close);
}

async function evictions() {
  const text = await (await fetch(`${server.origin}/metrics`)).text();
  // One series per cause (`{cause="stalled"}`, `{cause="over_cap"}`): their sum.
  return [...text.matchAll(/^messaging_sockets_evicted_total(?:\{[^}]*\})? (\d+)/gm)]
    .reduce((n, m) => n + Number(m[1]), 0);
}

describe('close codes in Chromium', () => {
  test('a page that stops reading is evicted and sees 1013 "slow consumer"', { timeout: 120000 }, async () => {
    const { page, socketId } = await openSocketPage();
    const { token } = await (await fetch(`${server.origin}/demo/token?churchId=${CHURCH}&personId=host`)).json();
    const room = await server.rest('GET', `/conversations/current/${CHURCH}/streamingLive/flood`, { token });
    await server.rest('POST', '/connections', { body: [{ conversationId: room.id, socketId, displayName: 'Slow' }] });
    const before = await evictions();

    // The page stops reading: its event loop is held by synchronous requests to /metrics
    // (no WebSocket message is dispatched meanwhile, so Chromium stops taking data off the
    // socket) until the server reports an eviction; then it reads again and finds the close.
    await page.evaluate((baseline) => {
      setTimeout(() => {
        const deadline = Date.now() + 60000;
        for (;;) {
          const xhr = new XMLHttpRequest();
          xhr.open('GET', '/metrics', false);
          xhr.send();
          const n = [...xhr.responseText.matchAll(/^messaging_sockets_evicted_total(?:\{[^}]*\})? (\d+)/gm)]
            .reduce((sum, m) => sum + Number(m[1]), 0);
          if (n > baseline || Date.now() > deadline) break;
        }
      }, 0);
    }, before);

    // Flood the room until the server gives up on the page.
    const content = 'x'.repeat(60000);
    const batch = Array.from({ length: 15 }, () => ({ conversationId: room.id, content, displayName: 'Flood' }));
    let sent = 0;
    while ((await evictions()) === before) {
      assert.ok(sent < 400, 'the stalled page was never evicted');
      await server.rest('POST', '/messages/send', { body: batch });
      sent += 1;
    }

    const close = await closeEvent(page);
    assert.equal(close.code, 1013, JSON.stringify(close));
    assert.equal(close.reason, 'slow consumer');
    assert.equal(close.wasClean, true);
    await page.close();
  });

  test('a server shutdown shows the page 1001', { timeout: 60000 }, async () => {
    const { page } = await openSocketPage();
    await server.stop();
    const close = await closeEvent(page);
    assert.equal(close.code, 1001, JSON.stringify(close));
    assert.equal(close.wasClean, true);
    await page.close();
  });
});
