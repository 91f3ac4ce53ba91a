import { describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { MessagingApi, MessagingApiError, createMessagingClient } from '../../messaging.js';
import { FakeClock, fakeWebSockets, handshake, flush } from './fakes.mjs';

function fakeFetch(respond) {
  const requests = [];
  const fetch = async (url, init) => {
    requests.push({ url, ...init, body: init.body === undefined ? undefined : JSON.parse(init.body) });
    const { status = 200, body = null, raw } = await respond(url, init);
    const text = raw ?? (body === null ? '' : JSON.stringify(body));
    return { ok: status >= 200 && status < 300, status, statusText: `status ${status}`, text: async () => text };
  };
  return { fetch, requests };
}

describe('MessagingApi', () => {
  test('sends JSON with the bearer token and parses the answer', async () => {
    const { fetch, requests } = fakeFetch(() => ({ body: [{ id: 'ROW00000001' }] }));
    const api = new MessagingApi({ baseUrl: 'http://h/messaging/', fetch, getToken: async () => 'T0K' });
    const rows = await api.joinRooms([{ conversationId: 'R', socketId: 'S' }]);
    assert.deepEqual(rows, [{ id: 'ROW00000001' }]);
    assert.equal(requests[0].url, 'http://h/messaging/connections');
    assert.equal(requests[0].method, 'POST');
    assert.equal(requests[0].headers.Authorization, 'Bearer T0K');
    assert.equal(requests[0].headers['Content-Type'], 'application/json');
    assert.deepEqual(requests[0].body, [{ conversationId: 'R', socketId: 'S' }]);
  });

  test('anonymous calls carry no Authorization header; path segments are encoded', async () => {
    const { fetch, requests } = fakeFetch(() => ({ body: [] }));
    const api = new MessagingApi({ baseUrl: 'http://h/messaging', fetch });
    await api.catchup('C 1', 'CONV/1', '2026-05-04T12:00:00.000Z');
    assert.equal(requests[0].url, 'http://h/messaging/messages/catchup/C%201/CONV%2F1?since=2026-05-04T12%3A00%3A00.000Z');
    assert.equal(requests[0].headers.Authorization, undefined);
    assert.equal(requests[0].body, undefined);
  });

  test('error answers reject with status and body', async () => {
    const { fetch } = fakeFetch(() => ({ status: 404, body: { error: 'Church not found' } }));
    const api = new MessagingApi({ baseUrl: 'http://h/messaging', fetch });
    await assert.rejects(api.currentConversation('C', 'streamingLive', 'S'), (error) => {
      assert.ok(error instanceof MessagingApiError);
      assert.equal(error.status, 404);
      assert.deepEqual(error.body, { error: 'Church not found' });
      assert.match(error.message, /404 Church not found/);
      return true;
    });
  });

  test('framework-shaped errors and non-JSON bodies are reported too', async () => {
    const { fetch } = fakeFetch((url) => (url.endsWith('/x')
      ? { status: 404, body: { error: { message: 'Endpoint not found', status: 404 } } }
      : { status: 502, raw: '<html>bad gateway</html>' }));
    const api = new MessagingApi({ baseUrl: 'http://h/messaging', fetch });
    await assert.rejects(api.get('/x'), /404 Endpoint not found/);
    await assert.rejects(api.get('/y'), (e) => e.status === 502 && e.body === '<html>bad gateway</html>');
  });

  test('a network failure rejects with status 0', async () => {
    const api = new MessagingApi({ baseUrl: 'http://h/messaging', fetch: async () => { throw new TypeError('fetch failed'); } });
    await assert.rejects(api.unreadCount(), (e) => e instanceof MessagingApiError && e.status === 0 && e.cause instanceof TypeError);
  });

  test('204 answers resolve with null', async () => {
    const { fetch } = fakeFetch(() => ({ status: 204 }));
    const api = new MessagingApi({ baseUrl: 'http://h/messaging', fetch });
    assert.equal(await api.delete('/conversations/C/X'), null);
  });
});

describe('createMessagingClient', () => {
  test('wires the primitives around one socket and one REST client', async () => {
    const clock = new FakeClock();
    const ws = fakeWebSockets();
    const { fetch, requests } = fakeFetch((url, init) => {
      if (url.endsWith('/connections')) return { body: JSON.parse(init.body) };
      if (url.includes('/catchup/')) return { body: [] };
      return { body: null };
    });
    const client = createMessagingClient({
      restBase: 'http://h/messaging', socketUrl: 'ws://h/', fetch, WebSocket: ws.FakeWebSocket, clock,
      windowTarget: null, documentTarget: null,
    });
    const opened = client.conversations.open({ churchId: 'C1', conversationId: 'CONV0000001', displayName: 'Ada' });
    await flush();
    assert.equal(ws.last.url, 'ws://h/?positions=1', 'positions are on by default (§5.6)');
    handshake(ws.last, 'SOCKET00001');
    await opened;
    assert.deepEqual(requests.map((r) => `${r.method} ${r.url}`), [
      'POST http://h/messaging/connections',
      'GET http://h/messaging/messages/catchup/C1/CONV0000001',
    ]);
    ws.last.push('attendance', { conversationId: 'CONV0000001', viewers: [{ id: 'R', displayName: 'Ada' }], totalViewers: 1 });
    assert.equal(client.presence.get('C1', 'CONV0000001').totalViewers, 1);
    client.destroy();
    assert.equal(client.socket.state, 'closed');
  });
});
