"""The MQTT link: topic layout, chunking of records too big for one message, and the publisher.

The collector needs ``topics`` and ``chunks``; ``publisher`` and ``settings`` are the agent's side.
"""

from agent.transport.chunks import Reassembler, split_record
from agent.transport.publisher import DeliveryResult, Publisher
from agent.transport.settings import MqttSettings
from agent.transport.topics import TopicSet, parse_frame_topic

__all__ = [
    "DeliveryResult",
    "MqttSettings",
    "Publisher",
    "Reassembler",
    "TopicSet",
    "parse_frame_topic",
    "split_record",
]
