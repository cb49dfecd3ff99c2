#!/usr/bin/env python3
"""Slow-consumer soak (issue 15): what a subscriber that never reads costs a running custody.

The scenario of Tests/MQTTFrontTests/SlowConsumerMemoryTests.swift, for as long as you like:
a QoS 0 subscriber that never reads its socket (a raw socket with a 4 KiB receive buffer),
a well-behaved paho-mqtt subscriber that reads everything, and a publisher of 1 KiB QoS 0
messages kept at most --ahead messages ahead of the reader (so that only the stalled one
falls behind). custody drops the stalled one's QoS 0 messages above its outbound
high-water mark and disconnects it after --slow-consumer-seconds; with --restall a new
stalled subscriber takes its place each time, so the pressure never stops. Every second it
prints the custody process's VmRSS and RssAnon (from /proc, with --pid), how many messages
went out and came back, and how many stalled subscribers custody has disconnected (seen in
custody's open descriptors: a client that never reads cannot see the server's FIN).

    custody --data-dir /tmp/soak --slow-consumer-seconds 2 &
    .venv-tests/bin/python Benchmarks/slow-consumer-soak.py --port 1883 --pid $! --seconds 300 --restall

Expect RssAnon to stay within start + 2 x the high-water mark (1 MiB by default) + a few MiB,
however long it runs. Exits 1 if the reader missed a message.
"""
import argparse
import socket
import struct
import sys
import threading
import time

import paho.mqtt.client as mqtt


def remaining_length(n):
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(text):
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id):
    # MQTT 3.1.1, clean session, keep-alive 0 (a stalled client sends nothing, not even PINGREQ).
    body = utf8("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0) + utf8(client_id)
    return bytes([0x10]) + remaining_length(len(body)) + body


def subscribe_packet(topic_filter):
    body = struct.pack("!H", 1) + utf8(topic_filter) + bytes([0])
    return bytes([0x82]) + remaining_length(len(body)) + body


def publish_packet(topic, payload):
    body = utf8(topic) + payload
    return bytes([0x30]) + remaining_length(len(body)) + body


def raw_client(host, port, client_id, receive_buffer=None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect((host, port))
    sock.sendall(connect_packet(client_id))
    connack = sock.recv(4)
    if len(connack) < 4 or connack[0] != 0x20 or connack[3] != 0:
        raise SystemExit(f"{client_id}: no CONNACK granting the connection: {connack!r}")
    return sock


def open_descriptors(pid):
    """custody's open file descriptors. A stalled client cannot see its own disconnection: the
    server's FIN waits behind the data it never reads. custody's descriptor count can."""
    import os
    return len(os.listdir(f"/proc/{pid}/fd")) if pid else None


def memory_kib(pid):
    if not pid:
        return None, None
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                values[key] = int(rest.split()[0])
    return values.get("VmRSS"), values.get("RssAnon")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--pid", type=int, help="custody's process id, for VmRSS and RssAnon")
    parser.add_argument("--seconds", type=float, default=60, help="how long to publish (default 60)")
    parser.add_argument("--payload", type=int, default=1024, help="payload bytes per message (default 1024)")
    parser.add_argument("--ahead", type=int, default=2000, help="most messages ahead of the reader (default 2000)")
    parser.add_argument("--restall", action="store_true", help="replace each disconnected stalled subscriber")
    args = parser.parse_args()

    if args.restall and not args.pid:
        parser.error("--restall needs --pid (a disconnection is seen in custody's descriptors)")
    stalled_count = 0
    stalled = raw_client(args.host, args.port, f"soak-stalled-{stalled_count}", receive_buffer=4096)
    stalled.sendall(subscribe_packet("soak/#"))
    disconnected = 0

    received = 0
    lock = threading.Lock()

    def on_message(_client, _userdata, _message):
        nonlocal received
        with lock:
            received += 1

    reader = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-reader", protocol=mqtt.MQTTv5)
    reader.on_message = on_message
    reader.connect(args.host, args.port)
    reader.subscribe("soak/#", qos=0)
    reader.loop_start()
    time.sleep(0.5)  # SUBACKs in

    publisher = raw_client(args.host, args.port, "soak-publisher")
    chunk = publish_packet("soak/m", b"b" * args.payload) * 100
    start_vm, start_anon = memory_kib(args.pid)
    # With the stalled subscriber connected: one fewer means custody closed it.
    descriptors = open_descriptors(args.pid)
    print(f"start: VmRSS={start_vm} KiB RssAnon={start_anon} KiB descriptors={descriptors}", flush=True)
    peak_anon = start_anon or 0
    sent = 0
    began = time.monotonic()
    next_report = began + 1
    while time.monotonic() - began < args.seconds:
        with lock:
            behind = sent - received
        if behind > args.ahead:
            time.sleep(0.0005)
        else:
            publisher.sendall(chunk)
            sent += 100
        now = time.monotonic()
        if now >= next_report:
            next_report += 1
            if descriptors is not None and open_descriptors(args.pid) < descriptors and stalled is not None:
                disconnected += 1
                stalled.close()
                stalled = None
                if args.restall:
                    stalled_count += 1
                    stalled = raw_client(args.host, args.port, f"soak-stalled-{stalled_count}", receive_buffer=4096)
                    stalled.sendall(subscribe_packet("soak/#"))
                    time.sleep(0.05)
                    descriptors = open_descriptors(args.pid)
            vm, anon = memory_kib(args.pid)
            peak_anon = max(peak_anon, anon or 0)
            with lock:
                got = received
            print(f"t={now - began:6.1f}s sent={sent} received={got} stalled_disconnected={disconnected} "
                  f"VmRSS={vm} KiB RssAnon={anon} KiB", flush=True)

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with lock:
            if received >= sent:
                break
        time.sleep(0.05)
    reader.loop_stop()
    reader.disconnect()
    publisher.close()
    if stalled is not None:
        stalled.close()
    vm, anon = memory_kib(args.pid)
    with lock:
        got = received
    growth = (peak_anon - start_anon) if start_anon is not None else None
    print(f"end: sent={sent} received={got} stalled_disconnected={disconnected} VmRSS={vm} KiB "
          f"RssAnon={anon} KiB peak_RssAnon={peak_anon} KiB growth={growth} KiB", flush=True)
    return 0 if got == sent else 1


if __name__ == "__main__":
    sys.exit(main())
