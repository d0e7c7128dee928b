"""A hook sends the events it queues itself; the delivery worker leaves them alone until
the hook's deadline has passed, so the two do not race for the same event."""

import random

from fake_asterisk import FakeCall, SocketPeer

from clinica_asterisk.channel import AgiChannel, LineStream
from clinica_asterisk.deadline import Deadline
from clinica_asterisk.hooks import HookServices, apply_stage
from clinica_asterisk.simulation import ARGS, recorded_calls, with_fresh_ids


def test_the_worker_leaves_a_hooks_fresh_event_to_the_hook_until_its_deadline(settings_for, closed_port_url):
    services = HookServices.open(settings_for(closed_port_url, hook_deadline_ms=2000))
    ring = with_fresh_ids(recorded_calls()["in-801"], random.Random(5))[0].with_args(ARGS["ring-in"])
    peer = SocketPeer(FakeCall(), ring)
    stream = LineStream(peer.script.fileno(), peer.script.fileno())
    channel = AgiChannel(stream, Deadline(5))
    request = stream.read_request()
    stage, args = request.stage_and_args
    result = apply_stage(services, channel, stage, args)
    peer.finish()

    assert result.status == "QUEUED"
    now = services.store.clock()
    outbox = services.outbox
    assert outbox.heads(now) == []  # the worker's view
    assert [e.request_type for e in outbox.heads(now, due_only=False)] == ["receivedTheCall"]
    assert [e.request_type for e in outbox.heads(now + 2.5)] == ["receivedTheCall"]
