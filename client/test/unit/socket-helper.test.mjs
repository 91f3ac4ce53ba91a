import { describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { SocketHelper } from '../../messaging.js';
import { FakeClock, fakeWebSockets, handshake, flush } from './fakes.mjs';

function setup(options = {}) {
  const clock = new FakeClock();
  const ws = fakeWebSockets();
  const windowTarget = new EventTarget();
  const documentTarget = new EventTarget();
  documentTarget.visibilityState = 'visible';
  const errors = [];
  const helper = new SocketHelper({
    url: 'ws://test.invalid/',
    WebSocket: ws.FakeWebSocket,
    clock,
    random: () => 0.5,
    windowTarget,
    documentTarget,
    onError: (e) => errors.push(e),
    ...options,
  });
  return { clock, ws, helper, windowTarget, documentTarget, errors };
}

describe('SocketHelper', () => {
  test('init sends getId on open and resolves with the socket id', async () => {
    const { ws, helper } = setup();
    const ready = helper.init();
    assert.equal(helper.state, 'connecting');
    assert.equal(ws.sockets.length, 1);
    assert.equal(ws.last.url, 'ws://test.invalid/?positions=1', 'positions are on by default (§5.6)');
    handshake(ws.last, 'SOCKET00001');
    assert.equal(await ready, 'SOCKET00001');
    assert.equal(helper.socketId, 'SOCKET00001');
    assert.equal(helper.state, 'open');
    assert.deepEqual(ws.last.sent, ['getId']);
  });

  test('init is re-entrant: concurrent calls share one connect, later calls resolve at once', async () => {
    const { ws, helper } = setup();
    const a = helper.init();
    const b = helper.init();
    const c = helper.init();
    assert.equal(a, b);
    assert.equal(b, c);
    assert.equal(ws.sockets.length, 1);
    handshake(ws.last, 'SOCKET00001');
    assert.deepEqual(await Promise.all([a, b, c]), ['SOCKET00001', 'SOCKET00001', 'SOCKET00001']);
    assert.equal(await helper.init(), 'SOCKET00001');
    assert.equal(ws.sockets.length, 1, 'an open socket is reused');
    assert.deepEqual(ws.last.sent, ['getId'], 'no second handshake');
  });

  test('handshake timeout: an unanswered getId abandons the socket and retries', async () => {
    const { clock, ws, helper } = setup({ handshakeTimeoutMs: 5000 });
    const ready = helper.init();
    ws.last.open(); // the server never answers
    clock.advance(4999);
    assert.equal(ws.sockets.length, 1);
    clock.advance(1);
    assert.deepEqual(ws.sockets[0].closedWith, { code: 4000, reason: 'handshake timeout' });
    assert.equal(helper.state, 'waiting');
    assert.equal(helper.attempt, 1);
    // The stale socket's late answer is ignored.
    ws.sockets[0].answerId('STALE000001');
    assert.equal(helper.socketId, null);
    clock.advance(helper.backoffDelay(0));
    assert.equal(ws.sockets.length, 2);
    handshake(ws.last, 'SOCKET00002');
    assert.equal(await ready, 'SOCKET00002', 'the first init() resolves with the retry');
    assert.equal(helper.attempt, 0);
  });

  test('a socket that never opens also times out', () => {
    const { clock, ws, helper } = setup({ handshakeTimeoutMs: 1000 });
    helper.init().catch(() => {});
    clock.advance(1000);
    assert.equal(ws.sockets[0].closedWith?.reason, 'handshake timeout');
    assert.equal(helper.state, 'waiting');
  });

  test('backoff grows exponentially with jitter and is capped at 30 s', () => {
    const low = setup({ random: () => 0 }).helper;
    const high = setup({ random: () => 0.999999 }).helper;
    const expected = [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000];
    expected.forEach((ceiling, attempt) => {
      assert.equal(low.backoffDelay(attempt), ceiling / 2, `attempt ${attempt} lower bound`);
      assert.equal(high.backoffDelay(attempt), ceiling, `attempt ${attempt} upper bound`);
    });
    assert.ok(high.backoffDelay(100) <= 30000);
    assert.ok(high.backoffDelay(5000) <= 30000, 'no overflow for huge attempt counts');
    // Two clients that dropped together pick different delays.
    const a = setup({ random: () => 0.1 }).helper.backoffDelay(3);
    const b = setup({ random: () => 0.9 }).helper.backoffDelay(3);
    assert.notEqual(a, b);
  });

  test('reconnects after an unexpected close, with growing delays, and resets after success', async () => {
    const { clock, ws, helper } = setup({ random: () => 0 });
    const delays = [];
    helper.init();
    handshake(ws.last, 'SOCKET00001');
    await flush();
    for (let i = 0; i < 8; i += 1) {
      ws.last.drop();
      assert.equal(helper.state, 'waiting');
      delays.push(helper.retryAt - clock.now());
      const before = ws.sockets.length;
      clock.advance(delays.at(-1) - 1);
      assert.equal(ws.sockets.length, before, 'no attempt before the delay');
      clock.advance(1);
      assert.equal(ws.sockets.length, before + 1);
    }
    assert.deepEqual(delays, [250, 500, 1000, 2000, 4000, 8000, 15000, 15000]);
    handshake(ws.last, 'SOCKET00002');
    assert.equal(helper.attempt, 0);
    ws.last.drop();
    assert.equal(helper.retryAt - clock.now(), 250, 'backoff starts over after a handshake');
  });

  test('emits reconnect with the new and previous socket id, not on the first connect', async () => {
    const { clock, ws, helper } = setup();
    const events = [];
    helper.addHandler('reconnect', 'test', (event) => events.push(event));
    helper.init();
    handshake(ws.last, 'SOCKET00001');
    assert.deepEqual(events, []);
    ws.last.drop();
    clock.advance(helper.retryAt - clock.now());
    handshake(ws.last, 'SOCKET00002');
    assert.deepEqual(events, [{ socketId: 'SOCKET00002', previousSocketId: 'SOCKET00001' }]);
  });

  test('a deliberate close does not reconnect and rejects a pending init', async () => {
    const { clock, ws, helper } = setup();
    const pending = helper.init();
    helper.close();
    await assert.rejects(pending, { name: 'AbortError' });
    assert.equal(helper.state, 'closed');
    assert.equal(ws.sockets[0].closedWith.code, 1000);
    ws.sockets[0].drop();
    clock.advance(60000);
    assert.equal(ws.sockets.length, 1, 'no reconnect after close()');
    // init() starts again.
    const again = helper.init();
    handshake(ws.last, 'SOCKET00002');
    assert.equal(await again, 'SOCKET00002');
  });

  for (const [name, fire] of [
    ['focus', (t) => t.windowTarget.dispatchEvent(new Event('focus'))],
    ['online', (t) => t.windowTarget.dispatchEvent(new Event('online'))],
    ['visibilitychange', (t) => t.documentTarget.dispatchEvent(new Event('visibilitychange'))],
  ]) {
    test(`probe on ${name}: an answered getId keeps the socket`, async () => {
      const t = setup();
      t.helper.init();
      handshake(t.ws.last, 'SOCKET00001');
      fire(t);
      assert.deepEqual(t.ws.last.sent, ['getId', 'getId']);
      t.clock.advance(1000);
      t.ws.last.answerId('SOCKET00001');
      t.clock.advance(10000);
      assert.equal(t.ws.sockets.length, 1);
      assert.equal(t.helper.state, 'open');
    });

    test(`probe on ${name}: no answer within 3 s reconnects`, async () => {
      const t = setup();
      const events = [];
      t.helper.addHandler('reconnect', 'r', (e) => events.push(e));
      t.helper.init();
      handshake(t.ws.last, 'SOCKET00001');
      fire(t);
      t.clock.advance(2999);
      assert.equal(t.ws.sockets.length, 1);
      t.clock.advance(1);
      assert.equal(t.ws.sockets[0].closedWith?.reason, 'probe timeout');
      assert.equal(t.ws.sockets.length, 2, 'reconnects at once, without a backoff');
      handshake(t.ws.last, 'SOCKET00002');
      assert.deepEqual(events, [{ socketId: 'SOCKET00002', previousSocketId: 'SOCKET00001' }]);
    });
  }

  test('probes are not stacked and a hidden tab does not probe', () => {
    const t = setup();
    t.helper.init();
    handshake(t.ws.last, 'SOCKET00001');
    t.documentTarget.visibilityState = 'hidden';
    t.documentTarget.dispatchEvent(new Event('visibilitychange'));
    assert.deepEqual(t.ws.last.sent, ['getId']);
    t.windowTarget.dispatchEvent(new Event('focus'));
    t.windowTarget.dispatchEvent(new Event('online'));
    assert.deepEqual(t.ws.last.sent, ['getId', 'getId'], 'one probe in flight at a time');
  });

  test('any frame answers a probe', () => {
    const t = setup();
    t.helper.init();
    handshake(t.ws.last, 'SOCKET00001');
    t.helper.probe();
    t.ws.last.push('attendance', { conversationId: 'R', viewers: [], totalViewers: 0 });
    t.clock.advance(5000);
    assert.equal(t.ws.sockets.length, 1);
  });

  test('a probe on a socket that is no longer open reconnects at once', () => {
    const t = setup();
    t.helper.init();
    handshake(t.ws.last, 'SOCKET00001');
    t.ws.last.readyState = 3; // closed without a close event, as after a sleep
    t.windowTarget.dispatchEvent(new Event('focus'));
    assert.equal(t.ws.sockets.length, 2);
  });

  test('online during a backoff wait reconnects now', () => {
    const t = setup();
    t.helper.init();
    handshake(t.ws.last, 'SOCKET00001');
    for (let i = 0; i < 5; i += 1) {
      t.ws.last.drop();
      t.clock.advance(t.helper.retryAt - t.clock.now());
    }
    t.ws.last.drop();
    assert.equal(t.helper.state, 'waiting');
    assert.ok(t.helper.retryAt - t.clock.now() >= 4000);
    const before = t.ws.sockets.length;
    t.windowTarget.dispatchEvent(new Event('online'));
    assert.equal(t.ws.sockets.length, before + 1);
    assert.equal(t.helper.state, 'connecting');
  });

  test('close() removes the window and document listeners', () => {
    const t = setup();
    t.helper.init();
    handshake(t.ws.last, 'SOCKET00001');
    t.helper.close();
    t.windowTarget.dispatchEvent(new Event('focus'));
    t.windowTarget.dispatchEvent(new Event('online'));
    t.documentTarget.dispatchEvent(new Event('visibilitychange'));
    assert.equal(t.ws.sockets.length, 1);
  });

  test('handlers are routed by action; the same id replaces both function and action', () => {
    const t = setup();
    const seen = [];
    t.helper.init();
    handshake(t.ws.last, 'SOCKET00001');
    t.helper.addHandler('message', 'h1', (data, envelope) => seen.push(['first', data, envelope.churchId]));
    t.helper.addHandler('message', 'h2', (data) => seen.push(['other', data]));
    t.ws.last.push('message', 1);
    t.helper.addHandler('attendance', 'h1', (data) => seen.push(['replaced', data]));
    t.ws.last.push('message', 2);
    t.ws.last.push('attendance', 3);
    t.helper.removeHandler('h2');
    t.ws.last.push('message', 4);
    assert.deepEqual(seen, [['first', 1, 'C1'], ['other', 1], ['other', 2], ['replaced', 3]]);
  });

  test('handler errors, malformed and binary frames never escape the socket layer', () => {
    const t = setup();
    const seen = [];
    t.helper.init();
    handshake(t.ws.last, 'SOCKET00001');
    t.helper.addHandler('message', 'bad', () => { throw new Error('boom'); });
    t.helper.addHandler('message', 'good', (data) => seen.push(data));
    t.ws.last.frame('not json');
    t.ws.last.frame('null');
    t.ws.last.onmessage({ data: new ArrayBuffer(4) });
    t.ws.last.push('message', 'ok');
    assert.deepEqual(seen, ['ok']);
    assert.equal(t.errors.length, 1);
    assert.equal(t.errors[0].message, 'boom');
  });

  test('a WebSocket constructor that throws is a failed attempt, not an exception', () => {
    let calls = 0;
    const t = setup({
      WebSocket: class { constructor() { calls += 1; throw new SyntaxError('bad url'); } },
    });
    const pending = t.helper.init();
    pending.catch(() => {});
    assert.equal(t.helper.state, 'waiting');
    assert.equal(t.errors[0].name, 'SyntaxError');
    t.clock.advance(t.helper.retryAt - t.clock.now());
    assert.equal(calls, 2);
    t.helper.close();
  });

  test('state changes are announced', () => {
    const t = setup();
    const states = [];
    t.helper.onStateChange((s) => states.push(s));
    t.helper.init();
    handshake(t.ws.last, 'SOCKET00001');
    t.ws.last.drop();
    t.helper.close();
    assert.deepEqual(states, ['connecting', 'open', 'waiting', 'closed']);
  });
});
