#!/usr/bin/env python3
"""Seed data for the Schemathesis run (tests/schemathesis.sh), with the standard library only.

Creates through REST what the fuzzer cannot guess (a group conversation with a message, a
streamingLive room, a private-message thread, notifications, a blocked IP) and opens live
WebSockets for their socket ids, then writes a Schemathesis config whose dictionaries feed
these ids to the path parameters and body fields of the same name half of the time, so that
operations that would otherwise only see `404` are reached. It keeps the sockets open
(answering pings) until it is terminated.

Usage: schemathesis_seed.py BASE_URL WS_HOST:PORT MEMBER_TOKEN MODERATOR_TOKEN OUT.toml
"""
import base64
import json
import os
import socket
import sys
import threading
import urllib.request

base, ws_addr, member, moderator, out = sys.argv[1:6]


def call(method, path, token, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + token)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
        return json.loads(raw) if raw else None


def frame(payload, opcode=0x1):
    """A masked client frame (RFC 6455 §5.2) of a short payload."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def read_frame(sock):
    def exact(n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    head = exact(2)
    length = head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(exact(2), "big")
    elif length == 127:
        length = int.from_bytes(exact(8), "big")
    return head[0] & 0x0F, exact(length)


def open_socket():
    """A WebSocket that sent `getId`; returns the socket and its id."""
    host, port = ws_addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET / HTTP/1.1\r\nHost: {ws_addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise EOFError("handshake")
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    sock.sendall(frame(b"getId"))
    while True:
        opcode, payload = read_frame(sock)
        if opcode == 0x1:
            reply = json.loads(payload)
            if reply.get("action") == "socketId":
                return sock, reply["data"]


def keep_alive(sock):
    """Answers pings and drops everything else, so the server keeps the socket."""
    sock.settimeout(None)
    try:
        while True:
            opcode, payload = read_frame(sock)
            if opcode == 0x9:
                sock.sendall(frame(payload, 0xA))
            elif opcode == 0x8:
                return
    except (EOFError, OSError):
        return


me = "/messaging"
group = call("POST", me + "/conversations", member, [
    {"contentType": "group", "contentId": "G1", "groupId": "G1", "title": "seed", "visibility": "public"}
])[0]
live = call("GET", me + "/conversations/current/C1/streamingLive/S1", moderator)
call("POST", me + "/conversations", moderator, [{"id": live["id"], "allowAnonymousPosts": True}])
host = call("GET", me + "/conversations/current/C1/streamingLiveHost/S1", moderator)
note = call("POST", me + "/conversations", moderator, [{"contentType": "person", "contentId": "PER1"}])[0]
messages = call("POST", me + "/messages", member, [
    {"conversationId": group["id"], "content": "seed message"},
    {"conversationId": group["id"], "content": "another"},
])
call("POST", me + "/messages", moderator, [{"conversationId": note["id"], "content": "a note"}])
call("POST", me + f"/messages/{messages[0]['id']}/reactions", member, {"emoji": "👍"})
pm_conv = call("POST", me + "/conversations", member, [{"contentType": "privateMessage", "contentId": "P1"}])[0]
pm = call("POST", me + "/privatemessages", member, [{"toPersonId": "P2", "conversationId": pm_conv["id"]}])[0]
call("POST", me + "/messages", member, [{"conversationId": pm_conv["id"], "content": "hello"}])
notes = call("POST", me + "/notifications/create", moderator, {
    "peopleIds": ["P1", "P2"], "contentType": "group", "contentId": "G1", "message": "seed"
})
call("POST", me + "/blockedips", moderator, [
    {"conversationId": live["id"], "ipAddress": "192.0.2.1", "serviceId": "SVC1"}
])
sockets = [open_socket() for _ in range(3)]
call("POST", me + "/connections", member, [
    {"conversationId": c, "socketId": sockets[0][1], "displayName": "seed"}
    for c in (group["id"], "alerts", "content-group-G1")
])
call("POST", me + "/connections", moderator, [
    {"conversationId": live["id"], "socketId": sockets[1][1], "displayName": "host"}
])

ids = {
    "churches": ["C1"],
    "people": ["P1", "P2"],
    "groups": ["G1"],
    "conversations": [group["id"], live["id"], host["id"], note["id"], pm_conv["id"]],
    "rooms": [group["id"], live["id"], "alerts", "content-group-G1"],
    "messages": [m["id"] for m in messages],
    "private_messages": [pm["id"]],
    "notifications": [n["id"] for n in notes],
    "sockets": [s[1] for s in sockets],
    "content_types": ["group", "streamingLive", "streamingLiveHost", "person", "privateMessage"],
    "content_ids": ["G1", "S1", "PER1", "P1"],
    "any_ids": sorted({group["id"], live["id"], host["id"], note["id"], pm_conv["id"], pm["id"]}
                      | {m["id"] for m in messages} | {n["id"] for n in notes}),
    "services": ["SVC1"],
    "emoji": ["👍", "❤"],
}
# Parameter name → dictionary. `id` names different objects per operation, so it draws from
# every seeded id.
bindings = {
    "path.churchId": "churches",
    "path.personId": "people",
    "path.groupId": "groups",
    "path.conversationId": "conversations",
    "path.roomId": "rooms",
    "path.messageId": "messages",
    "path.id": "any_ids",
    "path.socketId": "sockets",
    "path.contentType": "content_types",
    "path.contentId": "content_ids",
    "body.[*].conversationId": "conversations",
    "body.conversationId": "conversations",
    "body.[*].socketId": "sockets",
    "body.socketId": "sockets",
    "body.[*].id": "any_ids",
    "body.[*].toPersonId": "people",
    "body.[*].serviceId": "services",
    "body.peopleIds.[*]": "people",
    "body.emoji": "emoji",
}
with open(out, "w", encoding="utf-8") as f:
    for name, values in ids.items():
        f.write(f"[dictionaries.{name}]\nvalues = {json.dumps(values, ensure_ascii=False)}\n\n")
    # A body over 1 MiB gets the documented 413 before it is parsed, whatever it holds, so
    # 413 is a right answer to valid and invalid data alike (the defaults lack it).
    f.write(
        "[checks.negative_data_rejection]\n"
        'expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", '
        '"422", "428", "429", "5xx"]\n\n'
        "[checks.positive_data_acceptance]\n"
        'expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "413", "429", "5xx"]\n\n'
    )
    f.write("[parameters]\n")
    for key, name in bindings.items():
        f.write(f'"{key}" = {{ dictionary = "{name}", probability = 0.5 }}\n')
print(json.dumps(ids), flush=True)

threads = [threading.Thread(target=keep_alive, args=(s,), daemon=True) for s, _ in sockets]
for t in threads:
    t.start()
for t in threads:
    t.join()
