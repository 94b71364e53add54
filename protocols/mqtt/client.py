"""One MQTT 5 subscriber session: persistent, QoS 1, shared subscription, acknowledged by hand.

paho-mqtt 2.x runs the network loop in its own thread (`loop_start`); every received message is
handed to `on_message(InMessage)` from that thread, and acknowledged only when the owner calls
`ack` (paho `manual_ack=True`, `Client.ack(mid, qos)`), i.e. after Kafka confirmed it.

- Persistent session (MQTT 5.0 §3.1.2.4 Clean Start = 0, §3.1.2.11.2 Session Expiry Interval):
  a subscriber that dies and comes back under the same client id within the expiry gets every
  unacknowledged message again (§4.4: a PUBLISH not acknowledged is re-sent on reconnect) and what
  was queued for it meanwhile.
- Receive Maximum (§3.1.2.11.3) = the in-flight window: the broker sends at most that many
  unacknowledged QoS 1 messages, so a subscriber waiting for Kafka holds at most that many and the
  rest waits at the broker. DESIGN.md: keep it near 100.
- Shared subscription `$share/<group>/<filter>` (§4.8.2): the broker gives each message to one
  session of the group, so several shards split one topic filter.
- A packet identifier belongs to one network connection: after a reconnect the broker re-sends
  unacknowledged messages, maybe under other ids. `InMessage.epoch` counts connections, and
  `ack` ignores acknowledgements of an earlier connection (the message comes again; writes are
  idempotent downstream).
"""
from __future__ import annotations

import itertools
import logging
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

log = logging.getLogger(__name__)

KEEPALIVE_S = 30
QOS = 1
_PUBACK = struct.Struct("!BBH")
_EPOCHS = itertools.count(1)  # process-wide: an epoch never repeats, also across Subscriber objects


class InMessage(NamedTuple):
    """One received PUBLISH. A NamedTuple, not a frozen dataclass: one is made per message on paho's
    thread, and a tuple is built several times faster (a frozen dataclass sets each field through
    object.__setattr__); it is as immutable."""

    epoch: int  # the network connection it came on
    mid: int
    topic: str
    payload: bytes
    received: float  # time.time()
    dup: bool  # the broker says it may have sent it before
    qos: int  # 0 when the publisher sent it at QoS 0: nothing to acknowledge


@dataclass(frozen=True, slots=True)
class SessionSpec:
    host: str
    port: int
    client_id: str
    topic_filter: str
    share_group: str
    inflight: int
    session_expiry_s: int

    @property
    def subscription(self) -> str:
        return f"$share/{self.share_group}/{self.topic_filter}"


READ_SIZE = 64 * 1024  # bytes asked of the socket per recv(): ~400 of meterray's messages
MAX_READS_PER_WAKE = 16  # then back to paho's loop (writes, keepalive); select() wakes again at once
_PUBLISH, _PUBLISH_QOS1_MASK = 0x30, 0x06


class _BufferedClient(mqtt.Client):
    """paho's client, reading the socket in large chunks and handing QoS 1 PUBLISHes over lean.

    paho-mqtt 2.x reads one packet per select() wake-up, with a recv() for its first byte, one per
    byte of its remaining length and one for the rest (`_packet_read`), then builds an MQTTMessage,
    a Properties object, a debug log line and a topic match for it: ~60 µs of one core per message
    here, most of the shard's budget at 10,000 messages/s. This reader takes up to READ_SIZE bytes
    per recv(), cuts every complete packet out of them (MQTT 5.0 §2.1.4: fixed header byte, remaining
    length as a variable byte integer), and passes a QoS 1 PUBLISH straight to `on_publish`
    (§3.3.2: topic name, packet identifier, properties, payload); every other packet (CONNACK,
    SUBACK, PINGRESP, DISCONNECT, a QoS 0 or 2 PUBLISH, one with a topic alias) goes through paho's
    own handler as before. It overrides paho-mqtt 2.1–2.2 internals (`loop_read`, `_in_packet`,
    `_packet_handle`, `_sock_close`), as `ack_many` does, so a paho upgrade must re-check them.
    """

    def __init__(self, on_publish: Callable[[int, str, bytes, bool], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._rbuf = bytearray()
        self._on_publish_raw = on_publish

    def _sock_close(self) -> None:
        self._rbuf.clear()  # bytes of the connection being closed; the next one starts afresh
        super()._sock_close()

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        for _ in range(MAX_READS_PER_WAKE):
            if self._sock is None:
                return mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN
            try:
                data = self._sock_recv(READ_SIZE)
            except BlockingIOError:
                return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
            except OSError as err:
                log.warning("%s: receive failed: %s", self._client_id.decode(errors="replace"), err)
                return self._loop_rc_handle(mqtt.MQTTErrorCode.MQTT_ERR_CONN_LOST)
            if not data:
                return self._loop_rc_handle(mqtt.MQTTErrorCode.MQTT_ERR_CONN_LOST)
            with self._msgtime_mutex:
                self._last_bytes_received = mqtt.time_func()
            self._rbuf += data
            rc = self._dispatch()
            if rc:
                return self._loop_rc_handle(rc)
            if len(data) < READ_SIZE:
                return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS  # the socket is drained for now
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _dispatch(self) -> mqtt.MQTTErrorCode:
        """Handle every complete packet in the buffer; keep a trailing partial one for the next read."""
        buf = self._rbuf
        n, pos = len(buf), 0
        v5 = self._protocol == mqtt.MQTTv5
        rc = mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        while n - pos >= 2:
            length, mult, i, complete = 0, 1, pos + 1, False
            while i < n and i - pos <= 4:  # remaining length: a variable byte integer, at most 4 bytes (§1.5.5)
                b = buf[i]
                i += 1
                length += (b & 127) * mult
                mult <<= 7
                if not b & 128:
                    complete = True
                    break
            if not complete:
                if i - pos > 4:
                    del buf[:]
                    return mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL
                break  # the fixed header is not complete yet
            end = i + length
            if end > n:
                break  # nor is the packet
            cmd = buf[pos]
            if cmd & 0xF0 == _PUBLISH and cmd & _PUBLISH_QOS1_MASK == 0x02 and self._publish_qos1(buf, cmd, i, end, v5):
                pos = end
                continue
            self._in_packet = {"command": cmd, "have_remaining": 1, "remaining_count": [],
                               "remaining_mult": 1, "remaining_length": length,
                               "packet": bytearray(buf[i:end]), "to_process": 0, "pos": 0}
            try:
                rc = self._packet_handle()
            except MalformedPacket as err:
                log.warning("%s: malformed packet: %s", self._client_id.decode(errors="replace"), err)
                rc = mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL
            self._in_packet = {"command": 0, "have_remaining": 0, "remaining_count": [], "remaining_mult": 1,
                               "remaining_length": 0, "packet": bytearray(b""), "to_process": 0, "pos": 0}
            pos = end
            if rc or self._sock is None:
                break
        del buf[:pos]
        return rc

    def _publish_qos1(self, buf: bytearray, cmd: int, start: int, end: int, v5: bool) -> bool:
        """A QoS 1 PUBLISH to `on_publish`; False leaves it to paho (a topic alias, a topic that is
        not UTF-8, a packet too short: paho then says what is wrong)."""
        if end - start < 4:
            return False
        tlen = (buf[start] << 8) | buf[start + 1]
        p = start + 2 + tlen
        if tlen == 0 or p + 2 > end:
            return False
        try:
            topic = buf[start + 2:p].decode()
        except UnicodeDecodeError:
            return False
        mid = (buf[p] << 8) | buf[p + 1]
        p += 2
        if v5:  # properties: skipped (a subscriber has no use for them here), length first (§3.3.2.3.1)
            plen, mult = 0, 1
            while True:
                if p >= end:
                    return False
                b = buf[p]
                p += 1
                plen += (b & 127) * mult
                mult <<= 7
                if not b & 128:
                    break
            p += plen
            if p > end:
                return False
        self._on_publish_raw(mid, topic, bytes(buf[p:end]), bool(cmd & 0x08))
        return True


class Subscriber:
    def __init__(self, spec: SessionSpec, on_message: Callable[[InMessage], None]) -> None:
        self.spec = spec
        self._on_message = on_message
        self._epoch = 0
        self._lock = threading.Lock()
        self.connects = 0
        self.connected = False
        self.last_error = ""
        self.subscribed = threading.Event()
        c = _BufferedClient(self._publish, callback_api_version=CallbackAPIVersion.VERSION2,
                            client_id=spec.client_id, protocol=mqtt.MQTTv5, manual_ack=True)
        c.reconnect_delay_set(min_delay=1, max_delay=10)
        c.on_connect = self._connected
        c.on_disconnect = self._disconnected
        c.on_message = self._message
        c.on_subscribe = self._subscribed
        self._client = c

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.spec.session_expiry_s
        props.ReceiveMaximum = self.spec.inflight
        self._client.connect_async(self.spec.host, self.spec.port, keepalive=KEEPALIVE_S, clean_start=False,
                                   properties=props)
        self._client.loop_start()

    def ack_many(self, messages: list[InMessage]) -> tuple[int, int]:
        """Acknowledge messages, in their order, as one write; returns (acknowledged, skipped).

        paho acknowledges one message per call, each a queued packet, a wake-up of its network thread
        and a send() of its own: at 10,000 messages/s that alone costs a good part of a core. A PUBACK
        is 4 fixed bytes (MQTT 5.0 §3.4: type 0x40, remaining length 2, packet id; the reason code
        may be omitted for Success, §3.4.2.1), so a batch's PUBACKs go out as one queued write, through
        the same queue paho's own `ack` uses (`_packet_queue`, paho-mqtt 2.1–2.2).
        """
        with self._lock:
            if not self.connected:
                return 0, sum(m.qos > 0 for m in messages)
            epoch = self._epoch
            mids = [m.mid for m in messages if m.qos == 1 and m.epoch == epoch]
            skipped = sum(1 for m in messages if m.qos > 0 and m.epoch != epoch)
            if mids:
                blob = b"".join([_PUBACK.pack(0x40, 2, mid) for mid in mids])
                self._client._packet_queue(mqtt.PUBACK, blob, 0, 0)
            return len(messages) - skipped, skipped

    def ack(self, m: InMessage) -> bool:
        """Acknowledge a message; False if it came on an earlier connection (the broker sends it again)."""
        if m.qos == 0:
            return True
        with self._lock:
            if m.epoch != self._epoch or not self.connected:
                return False
            self._client.ack(m.mid, m.qos)
            return True

    def unsubscribe(self) -> None:
        """Ask the broker to send this session nothing new (what it already sent is still acknowledged)."""
        if self.connected:
            self._client.unsubscribe(self.spec.subscription)

    def stop(self, forget_session: bool = False) -> None:
        """Disconnect. The broker keeps the session (and queues for it) unless `forget_session`:
        then the session ends now (DISCONNECT with Session Expiry Interval 0, MQTT 5.0 §3.14.2.2.2)."""
        props = None
        if forget_session and self.spec.session_expiry_s > 0:
            props = Properties(PacketTypes.DISCONNECT)
            props.SessionExpiryInterval = 0
        try:
            self._client.disconnect(properties=props)
        finally:
            self._client.loop_stop()

    # --- paho callbacks (its network thread) -----------------------------------------------------

    def _connected(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self.last_error = f"connect refused: {reason}"
            log.warning("%s: %s", self.spec.client_id, self.last_error)
            return
        with self._lock:
            self._epoch = next(_EPOCHS)
            self.connected = True
            self.connects += 1
        client.subscribe(self.spec.subscription, options=SubscribeOptions(qos=QOS))

    def _subscribed(self, _client: mqtt.Client, _userdata: Any, _mid: int, reasons: Any, _props: Any) -> None:
        bad = [r for r in reasons if r.is_failure]
        if bad:
            self.last_error = f"subscription to {self.spec.subscription!r} refused: {bad[0]}"
            log.error("%s: %s", self.spec.client_id, self.last_error)
        else:
            self.subscribed.set()

    def _disconnected(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        with self._lock:
            self.connected = False
        if reason.is_failure:
            self.last_error = f"disconnected: {reason}"
            log.warning("%s: %s (paho reconnects)", self.spec.client_id, self.last_error)

    def _publish(self, mid: int, topic: str, payload: bytes, dup: bool) -> None:
        self._on_message(InMessage(self._epoch, mid, topic, payload, time.time(), dup, 1))

    def _message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._on_message(InMessage(self._epoch, msg.mid, msg.topic, bytes(msg.payload), time.time(), bool(msg.dup),
                                   msg.qos))
