"""What a worker does once at start-up: freeze what it loaded out of the garbage
collector's sight (GC_FREEZE), so full collections stay short under load."""

import gc
import weakref

import httpx


def test_start_up_freezes_what_it_loaded(gateway):
    # The session's gateway runs in this process, so its start-up froze our objects too.
    assert httpx.get(f"{gateway.url}/livez").status_code == 200
    frozen = gc.get_freeze_count()
    assert frozen > 10_000, frozen
    # Objects made later are still collected: a reference cycle made now goes away.
    node = Node()
    node.itself = node
    ref = weakref.ref(node)
    del node
    gc.collect()
    assert ref() is None


class Node:
    itself: "Node"
