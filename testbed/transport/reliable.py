"""paho-mqtt's client, made to lose no QoS 2 message across reconnects (issue 11).

paho 2.2 sends every unacknowledged message at once on reconnect, ignoring the server's Receive
Maximum (paho #492: its reconnect reset never counts what it marks for sending), and ignores
PUBREC reason codes (#895). Mosquitto 2.0 (Debian bookworm's 2.0.11 too) refuses what exceeds its
quota with PUBREC 0x97; paho sends PUBREL anyway, the broker's PUBCOMP makes ``on_publish`` report
the dropped message delivered, and about every other message past the 20th is lost. A PUBREL
resent to a broker that lost the session is completed the same way. :class:`ReliableClient`
overrides the private paho methods involved: ``pyproject.toml`` pins the paho it was checked
against and ``tests/test_qos2.py`` fails when they change. A refusal for quota is retried: it is
transient by definition, and the message is still wanted. Any other refusal (not authorised, too
large) would come back on every retry, so it is reported to ``on_publish`` with its reason code and
counted in ``publish_failures``, never as delivered. Exactly-once also needs a session that
outlives the connection: ``connect(..., exactly_once=True)``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt import _packet
from paho.mqtt.enums import MessageState, MQTTErrorCode, MQTTProtocolVersion

__all__ = ["MAX_QUOTA_RETRIES", "RECEIVE_MAXIMUM_DEFAULT", "ReliableClient"]

RECEIVE_MAXIMUM_DEFAULT = 65535  # MQTT 5 section 3.2.2.3.3: what a CONNACK without the property means
QUOTA_EXCEEDED = 0x97
# A refusal for quota is transient by definition: the message is sent again when a slot frees. The
# bound only stops a broker whose count disagrees with ours for good from looping forever.
MAX_QUOTA_RETRIES = 10
# How a refused publish shows in MQTTMessageInfo.rc, so that wait_for_publish() raises.
_REFUSAL_RC = {0x87: MQTTErrorCode.MQTT_ERR_ACL_DENIED, 0x95: MQTTErrorCode.MQTT_ERR_PAYLOAD_SIZE}

_ON_WIRE = (MessageState.MQTT_MS_WAIT_FOR_PUBACK, MessageState.MQTT_MS_WAIT_FOR_PUBREC,
            MessageState.MQTT_MS_WAIT_FOR_PUBCOMP)
_TO_PUBLISH = (MessageState.MQTT_MS_PUBLISH, MessageState.MQTT_MS_QUEUED)


class ReliableClient(paho.Client):
    """A ``paho.Client`` that keeps at most min(its own ``max_inflight_messages``, the server's
    Receive Maximum from the last CONNACK) QoS 1/2 messages in flight, reconnections included;
    re-queues a QoS 2 message the broker refused with 0x97 (quota exceeded) and reports any other
    refusal as a failed publish; and, when a CONNACK says the session is gone, publishes again
    what it would otherwise have released with a PUBREL the broker cannot match (at least once,
    rather than a silent loss)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._own_max_inflight = self._max_inflight_messages
        self._server_receive_maximum = RECEIVE_MAXIMUM_DEFAULT
        self._quota_refusals: dict[int, int] = {}  # mid -> refusals of that message so far
        self.pubrec_refusals: Counter[int] = Counter()  # PUBREC reason code >= 0x80 -> count
        self.publish_failures = 0  # messages given up on: reported to on_publish as failures

    @property
    def max_inflight_messages(self) -> int:
        """This client's own limit; the one applied is also capped by the server's Receive Maximum."""
        return self._own_max_inflight

    @max_inflight_messages.setter
    def max_inflight_messages(self, value: int) -> None:
        paho.Client.max_inflight_messages.fset(self, value)  # type: ignore[attr-defined]  # paho's checks
        self._own_max_inflight = value
        self._max_inflight_messages = self._limit()

    def _limit(self) -> int:
        # paho treats 0 as "no limit"; the server's Receive Maximum still is one.
        return min(self._own_max_inflight or RECEIVE_MAXIMUM_DEFAULT, self._server_receive_maximum)

    # -- reconnection: never flush more than the server accepts ----------------------------------

    def _messages_reconnect_reset_out(self) -> None:
        super()._messages_reconnect_reset_out()  # marks every unacknowledged message for sending
        with self._out_message_mutex:
            # Until the CONNACK says the server's Receive Maximum and whether it kept the session,
            # every PUBLISH waits, in order, behind the PUBRELs due: paho's CONNACK flush stops at
            # the first queued message. The count held full keeps publish() queuing meanwhile.
            held = [m.mid for m in self._out_messages.values() if m.qos > 0 and m.state in _TO_PUBLISH]
            for mid in held:
                self._out_messages[mid].state = MessageState.MQTT_MS_QUEUED
                self._out_messages.move_to_end(mid)
            self._inflight_messages = self._max_inflight_messages

    def _handle_connack(self) -> MQTTErrorCode:
        connack = _packet.decode_connack(self._in_packet["command"], self._in_packet["packet"], self._protocol)
        accepted = not connack.reason.is_failure
        if accepted:
            with self._out_message_mutex:
                # MQTT 3.1.1 has no properties: no Receive Maximum but the client's own.
                self._server_receive_maximum = getattr(connack.properties, "ReceiveMaximum", RECEIVE_MAXIMUM_DEFAULT)
                self._max_inflight_messages = self._limit()
                if not connack.flags & 0x01:  # no session: a PUBREL would complete a message it lacks
                    for m in self._out_messages.values():
                        if m.state == MessageState.MQTT_MS_RESEND_PUBREL:
                            m.state, m.dup = MessageState.MQTT_MS_QUEUED, True
        rc = super()._handle_connack()  # on_connect, then paho's flush: the PUBRELs due, all of them
        if not accepted or rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return rc
        with self._out_message_mutex:
            # What is in flight, counted from the messages themselves; then PUBLISHes in order as
            # far as the limit allows, the rest as acknowledgements come back.
            self._inflight_messages = sum(m.state in _ON_WIRE for m in self._out_messages.values())
            return self._update_inflight()

    # -- PUBREC with a failure reason: no PUBREL, never "delivered" -----------------------------------

    def _handle_pubrec(self) -> MQTTErrorCode:
        if self._protocol != MQTTProtocolVersion.MQTTv5:
            return super()._handle_pubrec()
        pubrec = _packet.decode_pubrec(self._in_packet["command"], self._in_packet["packet"], self._protocol)
        if not pubrec.reason.is_failure:
            self._quota_refusals.pop(pubrec.mid, None)
            return super()._handle_pubrec()
        code = pubrec.reason.value
        self._easy_log(paho.MQTT_LOG_WARNING, "Received PUBREC (Mid: %d) refused: %s", pubrec.mid, pubrec.reason)
        with self._out_message_mutex:
            m = self._out_messages.get(pubrec.mid)
            if m is None or m.state != MessageState.MQTT_MS_WAIT_FOR_PUBREC:
                return MQTTErrorCode.MQTT_ERR_SUCCESS  # not a publish awaiting this answer: nothing to undo
            self.pubrec_refusals[code] += 1
            refusals = self._quota_refusals.get(m.mid, 0) + 1
            if code == QUOTA_EXCEEDED and refusals <= MAX_QUOTA_RETRIES:
                # The refusal frees the identifier and the slot on both sides (MQTT 5 section 4.9).
                # The message keeps its place in the queue, so order is kept; it goes out when a
                # slot frees, or at once when nothing else is in flight to free one.
                self._quota_refusals[m.mid] = refusals
                m.state, m.dup = MessageState.MQTT_MS_QUEUED, False
                self._inflight_messages -= 1
                return self._update_inflight() if self._inflight_messages == 0 else MQTTErrorCode.MQTT_ERR_SUCCESS
            self._quota_refusals.pop(m.mid, None)
            self.publish_failures += 1
            m.info.rc = _REFUSAL_RC.get(code, MQTTErrorCode.MQTT_ERR_UNKNOWN)
            return self._do_on_publish(m.mid, pubrec.reason, pubrec.properties)
