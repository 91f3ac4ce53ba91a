import { describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { SocketHelper, SubscriptionManager } from '../../messaging.js';
import { FakeClock, fakeWebSockets, fakeApi, handshake, flush, connected, reconnect } from './fakes.mjs';

function setup({ api = fakeApi(), leaveDelayMs = 250 } = {}) {
  const clock = new FakeClock();
  const ws = fakeWebSockets();
  const errors = [];
  const socket = new SocketHelper({
    url: 'ws://test.invalid/', WebSocket: ws.FakeWebSocket, clock, random: () => 0,
    windowTarget: null, documentTarget: null, onError: (e) => errors.push(e),
  });
  const subs = new SubscriptionManager({ socket, api, clock, leaveDelayMs, onError: (e) => errors.push(e) });
  return { clock, ws, socket, subs, api, errors };
}


const ROOM = { churchId: 'C1', conversationId: 'CONV0000001' };

describe('SubscriptionManager', () => {
  test('the first join posts; more references post nothing', async () => {
    const t = setup();
    await connected(t);
    const row = await t.subs.joinRoom({ ...ROOM, displayName: 'Ada' });
    await t.subs.joinRoom(ROOM);
    await t.subs.joinRoom(ROOM);
    assert.deepEqual(t.api.callsOf('joinRooms'), [[[{ ...ROOM, displayName: 'Ada', socketId: 'SOCKET00001' }]]]);
    assert.equal(row.socketId, 'SOCKET00001');
    assert.deepEqual(t.subs.rooms(), [{ ...ROOM, displayName: 'Ada', refs: 3 }]);
  });

  test('concurrent first joins share one post', async () => {
    const t = setup();
    await connected(t);
    const [a, b] = await Promise.all([t.subs.joinRoom(ROOM), t.subs.joinRoom(ROOM)]);
    assert.equal(a, b);
    assert.equal(t.api.callsOf('joinRooms').length, 1);
  });

  test('a join waits for the socket id', async () => {
    const t = setup();
    const joined = t.subs.joinRoom(ROOM);
    await flush();
    assert.equal(t.api.callsOf('joinRooms').length, 0);
    assert.equal(t.ws.sockets.length, 1, 'the join connected the socket');
    handshake(t.ws.last, 'SOCKET00001');
    await joined;
    assert.equal(t.api.callsOf('joinRooms')[0][0][0].socketId, 'SOCKET00001');
  });

  test('the last leave posts after the debounce', async () => {
    const t = setup();
    await connected(t);
    await t.subs.joinRoom(ROOM);
    await t.subs.joinRoom(ROOM);
    assert.equal(await t.subs.leaveRoom(ROOM.churchId, ROOM.conversationId), false);
    const left = t.subs.leaveRoom(ROOM.churchId, ROOM.conversationId);
    await flush();
    t.clock.advance(249);
    await flush();
    assert.equal(t.api.callsOf('leaveRoom').length, 0);
    t.clock.advance(1);
    assert.equal(await left, true);
    assert.deepEqual(t.api.callsOf('leaveRoom'), [['C1', 'CONV0000001', 'SOCKET00001']]);
    assert.deepEqual(t.subs.rooms(), []);
  });

  test('a quick leave and join posts nothing', async () => {
    const t = setup();
    await connected(t);
    await t.subs.joinRoom(ROOM);
    const left = t.subs.leaveRoom(ROOM.churchId, ROOM.conversationId);
    t.clock.advance(100);
    await t.subs.joinRoom(ROOM);
    t.clock.advance(10000);
    await flush();
    assert.equal(await left, false);
    assert.equal(t.api.callsOf('joinRooms').length, 1);
    assert.equal(t.api.callsOf('leaveRoom').length, 0);
    assert.equal(t.subs.isJoined(ROOM.churchId, ROOM.conversationId), true);
  });

  test('a join after a posted leave posts again, after the leave', async () => {
    let releaseLeave;
    const api = fakeApi({ leaveRoom: () => new Promise((resolve) => { releaseLeave = resolve; }) });
    const t = setup({ api });
    await connected(t);
    await t.subs.joinRoom(ROOM);
    const left = t.subs.leaveRoom(ROOM.churchId, ROOM.conversationId);
    t.clock.advance(250);
    await flush();
    const joined = t.subs.joinRoom(ROOM);
    await flush();
    assert.equal(t.api.callsOf('joinRooms').length, 1, 'the join waits for the leave in flight');
    releaseLeave({ success: true });
    await Promise.all([left, joined]);
    assert.deepEqual(t.api.calls.map((c) => c.name), ['joinRooms', 'leaveRoom', 'joinRooms']);
  });

  test('leaving an unknown room is a no-op', async () => {
    const t = setup();
    assert.equal(await t.subs.leaveRoom('C1', 'nope'), false);
    assert.equal(t.api.calls.length, 0);
  });

  test('a failed join rejects its callers and holds no reference', async () => {
    const error = Object.assign(new Error('401 Unauthorized'), { status: 401 });
    let fail = true;
    const api = fakeApi({ joinRooms: (items) => { if (fail) throw error; return items; } });
    const t = setup({ api });
    await connected(t);
    await assert.rejects(t.subs.joinRoom(ROOM), error);
    await flush();
    assert.deepEqual(t.subs.rooms(), []);
    fail = false;
    await t.subs.joinRoom(ROOM);
    assert.equal(t.api.callsOf('joinRooms').length, 2, 'a later join posts again');
  });

  test('after a reconnect every held room is re-joined with the new socket id', async () => {
    const t = setup();
    await connected(t, 'SOCKET00001');
    const other = { churchId: 'C1', conversationId: 'alerts' };
    await t.subs.joinRoom({ ...ROOM, displayName: 'Ada' });
    await t.subs.joinRoom(other);
    const rejoined = [];
    t.subs.onRejoin((e) => rejoined.push(e));
    await reconnect(t, 'SOCKET00002');
    const posts = t.api.callsOf('joinRooms').slice(2).map(([items]) => items[0]);
    assert.deepEqual(posts, [
      { ...ROOM, displayName: 'Ada', socketId: 'SOCKET00002' },
      { ...other, displayName: '', socketId: 'SOCKET00002' },
    ]);
    assert.deepEqual(rejoined.map((e) => [e.conversationId, e.socketId]), [
      ['CONV0000001', 'SOCKET00002'], ['alerts', 'SOCKET00002'],
    ]);
    assert.equal(rejoined[0].connection.socketId, 'SOCKET00002');
  });

  test('a room whose leave is pending is not re-joined, and its leave is not posted', async () => {
    const t = setup();
    await connected(t, 'SOCKET00001');
    await t.subs.joinRoom(ROOM);
    const left = t.subs.leaveRoom(ROOM.churchId, ROOM.conversationId);
    await reconnect(t, 'SOCKET00002');
    t.clock.advance(1000);
    await flush();
    assert.equal(await left, true, 'the server dropped the rows with the old socket');
    assert.equal(t.api.callsOf('joinRooms').length, 1);
    assert.equal(t.api.callsOf('leaveRoom').length, 0);
  });

  test('a join in flight during a reconnect ends up on the new socket exactly once', async () => {
    let releaseFirst;
    let calls = 0;
    const api = fakeApi({
      joinRooms: (items) => {
        calls += 1;
        if (calls === 1) {
          return new Promise((_, reject) => { releaseFirst = () => reject(Object.assign(new Error('Socket not found'), { status: 404 })); });
        }
        return items;
      },
    });
    const t = setup({ api });
    await connected(t, 'SOCKET00001');
    const joined = t.subs.joinRoom(ROOM);
    await flush();
    await reconnect(t, 'SOCKET00002');
    releaseFirst();
    const row = await joined;
    await flush();
    assert.equal(row.socketId, 'SOCKET00002');
    assert.deepEqual(t.api.callsOf('joinRooms').map(([items]) => items[0].socketId), ['SOCKET00001', 'SOCKET00002']);
    assert.equal(t.errors.length, 0);
  });

  test('a leave after the socket changed posts nothing: the server already removed the row', async () => {
    const api = fakeApi({ joinRooms: (items) => { if (items[0].socketId === 'SOCKET00002') throw new Error('down'); return items; } });
    const t = setup({ api });
    await connected(t, 'SOCKET00001');
    await t.subs.joinRoom(ROOM);
    await reconnect(t, 'SOCKET00002'); // the re-join fails (reported to onError)
    assert.equal(t.errors.length, 1);
    const left = t.subs.leaveRoom(ROOM.churchId, ROOM.conversationId);
    t.clock.advance(250);
    assert.equal(await left, true);
    assert.equal(t.api.callsOf('leaveRoom').length, 0);
  });

  test('setName renames every room but alerts and re-joins use the new name', async () => {
    const t = setup();
    await connected(t, 'SOCKET00001');
    await t.subs.joinRoom({ ...ROOM, displayName: 'Old' });
    await t.subs.joinRoom({ churchId: 'C1', conversationId: 'alerts' });
    await t.subs.setName('New');
    assert.deepEqual(t.api.callsOf('setName'), [['SOCKET00001', 'New']]);
    await reconnect(t, 'SOCKET00002');
    const names = t.api.callsOf('joinRooms').slice(2).map(([items]) => [items[0].conversationId, items[0].displayName]);
    assert.deepEqual(names, [['CONV0000001', 'New'], ['alerts', '']]);
  });
});

describe('SubscriptionManager re-join retries', () => {
  test('a transient failure of a re-join is retried with a delay', async () => {
    let failures = 2;
    const api = fakeApi({
      joinRooms: (items) => {
        if (items[0].socketId === 'SOCKET00002' && failures > 0) {
          failures -= 1;
          throw Object.assign(new Error('503'), { status: 503 });
        }
        return items;
      },
    });
    const t = setup({ api });
    const rejoined = [];
    t.subs.onRejoin((e) => rejoined.push(e.socketId));
    await connected(t, 'SOCKET00001');
    await t.subs.joinRoom(ROOM);
    await reconnect(t, 'SOCKET00002');
    assert.equal(t.api.callsOf('joinRooms').length, 2);
    t.clock.advance(1000);
    await flush();
    t.clock.advance(2000);
    await flush();
    assert.equal(t.api.callsOf('joinRooms').length, 4);
    assert.deepEqual(rejoined, ['SOCKET00002']);
    assert.equal(t.errors.length, 0);
  });

  test('a denied re-join is reported, not retried', async () => {
    const api = fakeApi({
      joinRooms: (items) => {
        if (items[0].socketId === 'SOCKET00002') throw Object.assign(new Error('401'), { status: 401 });
        return items;
      },
    });
    const t = setup({ api });
    await connected(t, 'SOCKET00001');
    await t.subs.joinRoom(ROOM);
    await reconnect(t, 'SOCKET00002');
    t.clock.advance(60000);
    await flush();
    assert.equal(t.api.callsOf('joinRooms').length, 2);
    assert.equal(t.errors.length, 1);
    assert.equal(t.errors[0].status, 401);
  });
});
