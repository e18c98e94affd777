"""The grpcurl append of docs/api.md is a valid request in protobuf's JSON mapping (what grpcurl
sends), its base64 payload is the JSON the text says, and the sidecar accepts it."""

from __future__ import annotations

import base64
import json
import re
import uuid
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from k1s0_event_store.protocol import event_store_pb2 as pb

API_MD = Path(__file__).resolve().parents[2] / "docs" / "api.md"


async def test_grpcurl_append_example_is_accepted(stub: Any) -> None:
    text = API_MD.read_text()
    found = re.search(r"grpcurl -plaintext -d '(\{.*?\})' localhost:9090 (\S+)/AppendEvents", text, re.S)
    assert found is not None
    request = json_format.Parse(found.group(1), pb.AppendEventsRequest())
    said = re.search(r"`(eyJ[^`]+)` is\n`(\{[^`]+\})`", text)
    assert said is not None and base64.b64decode(said.group(1)).decode() == said.group(2)
    assert request.events[0].payload_json.decode() == said.group(2)
    request.stream_id = f"order-{uuid.uuid4().hex[:8]}"  # the documented id may exist from another test
    answer = await stub.AppendEvents(request)
    assert answer.current_version == 1
    assert json.loads(answer.events[0].payload_json) == {"order_id": "order-002", "total_amount": 4500}
    assert answer.events[0].metadata.actor_id == "user-001"
