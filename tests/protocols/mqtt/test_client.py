"""The MQTT subscriber's own packet reader (protocols/mqtt/client.py `_BufferedClient`) on the real
Mosquitto: every QoS 1 message arrives once, whole and in order, whatever its size (PUBLISH packets
cut across the 64 KiB reads, remaining lengths of 1 to 3 bytes) and whatever MQTT 5 properties the
publisher attached; QoS 0 messages still take paho's path; what was acknowledged is not sent again to
the resumed session, what was not is."""
from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from meterray.settings import Settings
from protocols.mqtt.client import READ_SIZE, InMessage, SessionSpec, Subscriber
from tests.conftest import wait_for


def _publisher(settings: Settings, client_id: str) -> mqtt.Client:
    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    pub.connect(settings.mqtt_host, settings.mqtt_port)
    pub.loop_start()
    return pub


def _subscriber(settings: Settings, tag: str, got: list[InMessage]) -> Subscriber:
    lock = threading.Lock()

    def received(m: InMessage) -> None:
        with lock:
            got.append(m)

    spec = SessionSpec(settings.mqtt_host, settings.mqtt_port, f"{tag}-sub", f"{tag}/#", tag, 100, 120)
    sub = Subscriber(spec, received)
    sub.start()
    wait_for(lambda: sub.subscribed.is_set(), 30, "the subscription")
    return sub


def test_messages_of_every_size_and_with_properties_arrive_whole_once_and_in_order() -> None:
    settings = Settings.from_env()
    tag = f"clienttest-{time.monotonic_ns()}"
    got: list[InMessage] = []
    sub = _subscriber(settings, tag, got)
    pub = _publisher(settings, f"{tag}-pub")
    # 1..3-byte remaining lengths, payloads larger than one read, and many small ones sharing a read.
    sizes = [0, 1, 100, 127, 128, 16_383, 16_384, READ_SIZE - 20, READ_SIZE, READ_SIZE + 1, 3 * READ_SIZE + 7,
             *range(50, 350)]
    sent: list[tuple[str, bytes, int]] = []
    try:
        for i, size in enumerate(sizes):
            topic = f"{tag}/d{i % 7}/{'x' * (i % 40)}"
            payload = bytes((i + k) % 256 for k in range(size))
            props = None
            if i % 3 == 0:  # properties the reader must skip over
                props = Properties(PacketTypes.PUBLISH)
                props.UserProperty = [("k", "v" * (i % 50))]
                props.MessageExpiryInterval = 3600
                props.ContentType = "application/octet-stream"
            qos = 0 if i % 11 == 5 else 1
            pub.publish(topic, payload, qos=qos, properties=props).wait_for_publish(30)
            sent.append((topic, payload, qos))
        acked: list[InMessage] = []

        def all_in() -> bool:  # acknowledge as they come: the broker sends at most 100 unacknowledged
            new = got[len(acked):]
            assert sub.ack_many(new) == (len(new), 0)
            acked.extend(new)
            return len(acked) >= len(sent)

        wait_for(all_in, 60, f"{len(sent)} messages", every_s=0.05)
        time.sleep(0.5)  # nothing more may come
        # In order within QoS 1 (MQTT 5.0 §4.6); a QoS 0 message is not held back by the in-flight window,
        # so it may overtake QoS 1 messages queued at the broker.
        assert [(m.topic, m.payload, m.qos) for m in got if m.qos == 1] == [s for s in sent if s[2] == 1]
        assert sorted((m.topic, m.payload) for m in got if m.qos == 0) == sorted((t, p) for t, p, q in sent if q == 0)
        assert all(m.mid > 0 and not m.dup for m in got if m.qos == 1)
    finally:
        sub.stop()
        pub.disconnect()
        pub.loop_stop()


def test_a_resumed_session_gets_again_exactly_what_was_not_acknowledged() -> None:
    settings = Settings.from_env()
    tag = f"clienttest-{time.monotonic_ns()}"
    got: list[InMessage] = []
    sub = _subscriber(settings, tag, got)
    pub = _publisher(settings, f"{tag}-pub")
    try:
        for i in range(40):
            pub.publish(f"{tag}/m", str(i).encode(), qos=1).wait_for_publish(30)
        wait_for(lambda: len(got) == 40, 60, "40 messages")
        sub.ack_many(got[:25])
        time.sleep(0.5)  # the PUBACKs leave before the connection closes
    finally:
        sub.stop()
    again: list[InMessage] = []
    sub = _subscriber(settings, tag, again)
    try:
        wait_for(lambda: len(again) >= 15, 60, "the 15 unacknowledged messages again")
        time.sleep(0.5)
        assert [m.payload for m in again] == [str(i).encode() for i in range(25, 40)]
        assert all(m.dup for m in again)
        sub.ack_many(again)
    finally:
        sub.stop(forget_session=True)
        pub.disconnect()
        pub.loop_stop()
