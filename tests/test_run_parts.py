"""The stored format of run parts: what runs already in DynamoDB and Table Storage were written
with. The store contracts round-trip runs, so they would pass if a key or the manifest text
changed on both sides at once; these pin the format that existing data has."""

from __future__ import annotations

import pytest

from patchpilot.adapters.aws import dynamodb_store
from patchpilot.adapters.azure import table_store
from patchpilot.adapters.run_parts import Manifest, Part, PartLayout

MANIFEST = Manifest(Part("v7-1a2b3c4d", 2), (Part("v1-00ff00ff", 1), Part("v7-1a2b3c4d", 2)))


def test_the_manifest_text_is_the_stored_one_and_parses_back() -> None:
    text = '{"header":["v7-1a2b3c4d",2],"waves":[["v1-00ff00ff",1],["v7-1a2b3c4d",2]]}'
    assert MANIFEST.dump() == text
    assert Manifest.parse(text) == Manifest.parse(text.encode()) == MANIFEST
    assert Manifest.parse('{"header":null,"waves":[]}') == Manifest(None, ())


@pytest.mark.parametrize(
    ("layout", "keys"),
    [
        (
            dynamodb_store._LAYOUT,
            [
                "WAVE#0000#v1-00ff00ff#00",
                "WAVE#0001#v7-1a2b3c4d#00",
                "WAVE#0001#v7-1a2b3c4d#01",
                "HDR#v7-1a2b3c4d#00",
                "HDR#v7-1a2b3c4d#01",
            ],
        ),
        (
            table_store._LAYOUT,
            [
                "wave:0000:v1-00ff00ff:00",
                "wave:0001:v7-1a2b3c4d:00",
                "wave:0001:v7-1a2b3c4d:01",
                "header:v7-1a2b3c4d:00",
                "header:v7-1a2b3c4d:01",
            ],
        ),
    ],
    ids=["dynamodb", "table"],
)
def test_each_store_keys_its_parts_as_it_always_has(layout: PartLayout, keys: list[str]) -> None:
    assert layout.keys(MANIFEST) == keys
    assert layout.superseded(MANIFEST, Manifest(None, MANIFEST.waves[:1])) == keys[1:]
