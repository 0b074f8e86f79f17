"""Inventories: good entries, and bad ones named by index and id."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from patchpilot.errors import InputError, Problem
from patchpilot.inventory import SLICE, Instance, load_inventory, parse_inventory

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def entry(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"id": "i-1", "cloud": "aws", "region": "us-east-1", "os": "linux"}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def problems_of(data: Any) -> tuple[Problem, ...]:
    with pytest.raises(InputError) as caught:
        parse_inventory(data, "inv.json")
    assert caught.value.source == "inv.json"
    return caught.value.problems


def rendered(data: Any) -> list[str]:
    with pytest.raises(InputError) as caught:
        parse_inventory(data, "inv.json")
    return caught.value.render().splitlines()


# --- good entries ------------------------------------------------------------------------------------


def test_minimal_entry_gets_defaults() -> None:
    (instance,) = parse_inventory({"instances": [entry()]}, "inv.json")
    assert instance == Instance(id="i-1", cloud="aws", region="us-east-1", os="linux")
    assert instance.name == ""
    assert instance.zone is None
    assert instance.availability_set is None
    assert instance.update_domain is None
    assert instance.tags == {}


def test_full_azure_entry_keeps_every_field() -> None:
    arm_id = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/web-01"
    data = {
        "instances": [
            {
                "id": arm_id,
                "name": "",
                "cloud": "azure",
                "region": "japaneast",
                "zone": None,
                "availability_set": "as-web",
                "update_domain": 0,
                "os": "windows",
                "tags": {"Environment": "production"},
            }
        ]
    }
    (instance,) = parse_inventory(data, "inv.json")
    assert instance.cloud == "azure"
    assert instance.availability_set == "as-web"
    assert instance.update_domain == 0
    assert instance.tags == {"Environment": "production"}
    assert instance.short_name == "web-01"  # no name: the last part of the ARM id
    assert instance.label == arm_id


def test_named_instance_label_shows_id_and_name() -> None:
    (instance,) = parse_inventory({"instances": [entry(name="api-01")]}, "inv.json")
    assert instance.short_name == "api-01"
    assert instance.label == "i-1 (api-01)"


def test_numbers_in_string_fields_become_strings() -> None:
    (instance,) = parse_inventory({"instances": [entry(zone=1, tags={"Tier": 3})]}, "inv.json")
    assert instance.zone == "1"
    assert instance.tags == {"Tier": "3"}


def test_empty_instances_list_is_an_empty_fleet() -> None:
    assert parse_inventory({"instances": []}, "inv.json") == []


def test_example_fleet_loads_in_order() -> None:
    instances = load_inventory(str(EXAMPLES / "fleet.json"))
    raw = json.loads((EXAMPLES / "fleet.json").read_text(encoding="utf-8"))["instances"]
    assert [i.id for i in instances] == [e["id"] for e in raw]
    assert {i.cloud for i in instances} == {"aws", "azure"}
    assert len({i.id for i in instances}) == len(instances)


# --- bad entries -------------------------------------------------------------------------------------


def test_unknown_field_is_named_with_index_and_id_and_a_suggestion() -> None:
    assert rendered({"instances": [entry(zon="a")]}) == [
        'inv.json: instances[0].zon: unknown field (did you mean zone?) (entry "i-1")'
    ]


def test_unknown_field_far_from_any_name_lists_the_allowed_ones() -> None:
    (problem,) = problems_of({"instances": [entry(), entry(id="i-2", priority="high")]})
    assert problem.path == ("instances", 1, "priority")
    assert problem.message.startswith("unknown field (allowed: id, cloud, region, os, name, zone")
    assert problem.message.endswith('(entry "i-2")')


def test_entry_that_is_not_an_object_is_named_by_index() -> None:
    (problem,) = problems_of({"instances": [entry(), "i-2"]})
    assert problem.path == ("instances", 1)
    assert problem.message == 'expected a mapping, got "i-2"'


@pytest.mark.parametrize("missing", ["id", "cloud", "region", "os"])
def test_missing_required_field_is_named(missing: str) -> None:
    data = {"instances": [entry(**{missing: ...})]}
    (problem,) = problems_of(data)
    assert problem.path == ("instances", 0, missing)
    assert problem.message.startswith("required")


def test_empty_entry_names_all_four_required_fields() -> None:
    assert rendered({"instances": [{}]}) == [
        "inv.json: instances[0].id: required",
        "inv.json: instances[0].cloud: required",
        "inv.json: instances[0].region: required",
        "inv.json: instances[0].os: required",
    ]


def test_bad_cloud_lists_the_choices() -> None:
    assert rendered({"instances": [entry(cloud="gcp")]}) == [
        "inv.json: instances[0].cloud: expected 'aws' or 'azure', got \"gcp\" (entry \"i-1\")"
    ]


def test_bad_os_lists_the_choices() -> None:
    (problem,) = problems_of({"instances": [entry(os="bsd")]})
    assert problem.path == ("instances", 0, "os")
    assert problem.message == "expected 'linux' or 'windows', got \"bsd\" (entry \"i-1\")"


def test_a_mistyped_cloud_or_os_suggests_the_nearest_value() -> None:
    cloud, os = rendered({"instances": [entry(cloud="AWS", os="Linux")]})
    assert cloud.endswith('.cloud: expected \'aws\' or \'azure\', got "AWS" (did you mean "aws"?) (entry "i-1")')
    assert os.endswith('.os: expected \'linux\' or \'windows\', got "Linux" (did you mean "linux"?) (entry "i-1")')


def test_negative_update_domain_is_rejected() -> None:
    (problem,) = problems_of({"instances": [entry(update_domain=-1)]})
    assert problem.path == ("instances", 0, "update_domain")
    assert problem.message == 'input should be greater than or equal to 0, got -1 (entry "i-1")'


@pytest.mark.parametrize("field", ["id", "region"])
def test_empty_id_or_region_is_rejected(field: str) -> None:
    (problem,) = problems_of({"instances": [entry(**{field: ""})]})
    assert problem.path == ("instances", 0, field)


def test_tags_must_be_an_object() -> None:
    (problem,) = problems_of({"instances": [entry(tags=["a"])]})
    assert problem.path == ("instances", 0, "tags")
    assert problem.message.startswith("expected a mapping") or "dictionary" in problem.message


def test_every_bad_entry_is_reported() -> None:
    problems = problems_of({"instances": [entry(cloud="gcp"), entry(id="i-2"), entry(id="i-3", os="bsd")]})
    assert [p.path for p in problems] == [("instances", 0, "cloud"), ("instances", 2, "os")]
    assert problems[1].message.endswith('(entry "i-3")')


def test_duplicate_id_names_both_entries() -> None:
    assert rendered({"instances": [entry(), entry(id="i-2"), entry()]}) == [
        'inv.json: instances[2].id: duplicate id "i-1" (also instances[0])'
    ]


def test_duplicate_id_is_reported_beside_other_problems() -> None:
    problems = problems_of({"instances": [entry(), entry(cloud="gcp")]})
    assert [p.path for p in problems] == [("instances", 1, "cloud"), ("instances", 1, "id")]


def test_number_id_and_the_same_string_id_are_duplicates() -> None:
    # Ids are read as strings, so 5 and "5" are the same instance.
    (problem,) = problems_of({"instances": [entry(id=5), entry(id="5")]})
    assert problem.path == ("instances", 1, "id")
    assert problem.message == 'duplicate id "5" (also instances[0])'


@pytest.mark.parametrize("bad_id", [[1], {"a": 1}])
def test_id_of_the_wrong_type_is_a_problem_not_a_crash(bad_id: object) -> None:
    problems = problems_of({"instances": [entry(id=bad_id), entry(id=bad_id)]})
    assert [p.path for p in problems] == [("instances", 0, "id"), ("instances", 1, "id")]
    assert all(p.message.startswith("input should be a valid string") for p in problems)


# --- top level ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [[], "instances", None, 3])
def test_top_level_that_is_not_an_object_is_rejected(data: object) -> None:
    assert rendered(data) == ['inv.json: (top level): expected an object with an "instances" list']


def test_missing_instances_is_rejected() -> None:
    assert rendered({"machines": []}) == ['inv.json: (top level): expected an object with an "instances" list']


@pytest.mark.parametrize("value, shown", [({}, "{}"), ("i-1", '"i-1"'), (None, "None")])
def test_instances_that_is_not_a_list_is_rejected(value: object, shown: str) -> None:
    assert rendered({"instances": value}) == [f"inv.json: instances: expected a list, got {shown}"]


def test_unknown_top_level_field_is_named() -> None:
    assert rendered({"instances": [], "extra": 1}) == ["inv.json: extra: unknown field (allowed: instances)"]


# --- files -------------------------------------------------------------------------------------------


def test_load_inventory_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps({"instances": [entry(), entry(id="i-2", cloud="azure")]}), encoding="utf-8")
    assert [i.id for i in load_inventory(str(path))] == ["i-1", "i-2"]


def test_a_file_shares_the_strings_its_machines_repeat(tmp_path: Path) -> None:
    # A fleet of 100,000 stays light: one region, tag key or value string for all who share it.
    path = tmp_path / "fleet.json"
    machines = [entry(id=f"i-{n}", region="ap-northeast-1", tags={"Environment": "production"}) for n in range(3)]
    path.write_text(json.dumps({"instances": machines}), encoding="utf-8")
    first, second, third = load_inventory(str(path))
    assert first.region is second.region is third.region
    assert first.tags["Environment"] is second.tags["Environment"] is third.tags["Environment"]


def test_a_file_with_duplicate_ids_names_both_entries(tmp_path: Path) -> None:
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps({"instances": [entry(), entry(cloud="azure")]}), encoding="utf-8")
    with pytest.raises(InputError) as caught:
        load_inventory(str(path))
    assert caught.value.render() == f'{path}: instances[1].id: duplicate id "i-1" (also instances[0])'


def test_invalid_json_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "fleet.json"
    path.write_text('{\n  "instances": [\n    {"id": "i-1",}\n  ]\n}\n', encoding="utf-8")
    with pytest.raises(InputError) as caught:
        load_inventory(str(path))
    (problem,) = caught.value.problems
    assert problem.message.startswith("not valid JSON: ")
    assert (problem.line, problem.column) == (3, 18)
    assert caught.value.render().startswith(f"{path}:3:18: (top level): not valid JSON: ")


def test_problems_in_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps({"instances": [entry(zon="a")]}), encoding="utf-8")
    with pytest.raises(InputError) as caught:
        load_inventory(str(path))
    assert caught.value.render() == (f'{path}: instances[0].zon: unknown field (did you mean zone?) (entry "i-1")')


def test_missing_inventory_file_says_file_not_found(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.json")
    with pytest.raises(InputError) as caught:
        load_inventory(path)
    assert caught.value.render() == f"{path}: (top level): file not found"


def test_directory_instead_of_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        load_inventory(str(tmp_path))
    assert caught.value.problems[0].message == "is a directory, expected a file"


def test_non_utf8_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "fleet.json"
    path.write_bytes(b'{"instances": [{"id": "\xff"}]}')
    with pytest.raises(InputError) as caught:
        load_inventory(str(path))
    assert caught.value.problems[0].message.startswith("not UTF-8 text")


# --- traffic pools ---------------------------------------------------------------------------------


def test_traffic_pools_default_to_none() -> None:
    (instance,) = parse_inventory({"instances": [entry()]}, "inv.json")
    assert instance.traffic_pools == ()


def test_traffic_pools_take_a_list_or_one_id() -> None:
    one, many = parse_inventory(
        {"instances": [entry(traffic_pools="tg-web"), entry(id="i-2", traffic_pools=["tg-web", "lb-api"])]},
        "inv.json",
    )
    assert one.traffic_pools == ("tg-web",)
    assert many.traffic_pools == ("tg-web", "lb-api")


def test_an_empty_pool_id_is_named_with_its_entry() -> None:
    assert rendered({"instances": [entry(traffic_pools=["tg-web", ""])]}) == [
        'inv.json: instances[0].traffic_pools[1]: string should have at least 1 character, got "" (entry "i-1")'
    ]


def test_traffic_pools_are_bounded() -> None:
    (problem,) = problems_of({"instances": [entry(traffic_pools=[f"tg-{n}" for n in range(101)])]})
    assert problem.path == ("instances", 0, "traffic_pools")
    assert "at most 100 items" in problem.message
    (long_id,) = problems_of({"instances": [entry(traffic_pools=["x" * 1025])]})
    assert long_id.path == ("instances", 0, "traffic_pools", 0)


def test_traffic_pools_must_be_ids() -> None:
    (problem,) = problems_of({"instances": [entry(traffic_pools={"tg-web": 1})]})
    assert problem.path == ("instances", 0, "traffic_pools")


def test_example_fleet_with_pools_loads() -> None:
    fleet = load_inventory(str(EXAMPLES / "fleet-pools.json"))
    web = [i for i in fleet if "lb-web" in i.traffic_pools]
    assert len(web) == 9
    assert [i.short_name for i in fleet if "tg-batch-admin" in i.traffic_pools] == ["worker-osa-01"]


# --- scaling groups --------------------------------------------------------------------------------


def test_scaling_group_defaults_to_none_and_takes_any_id() -> None:
    plain, member = parse_inventory(
        {"instances": [entry(), entry(id="i-2", scaling_group="asg-web")]},
        "inv.json",
    )
    assert plain.scaling_group is None
    assert member.scaling_group == "asg-web"


def test_an_empty_scaling_group_is_named_with_its_entry() -> None:
    assert rendered({"instances": [entry(scaling_group="")]}) == [
        'inv.json: instances[0].scaling_group: string should have at least 1 character, got "" (entry "i-1")'
    ]


def test_a_large_inventory_loads_in_order_a_slice_at_a_time(tmp_path: Path) -> None:
    """Past several of `load_inventory`'s slices (inventory.SLICE entries each), in the file's order."""
    count = 3 * SLICE + 5
    path = tmp_path / "inv.json"
    path.write_text(json.dumps({"instances": [entry(id=f"i-{n:06d}") for n in range(count)]}))
    assert [i.id for i in load_inventory(str(path))] == [f"i-{n:06d}" for n in range(count)]


@pytest.mark.parametrize(
    ("late", "expected"),
    [
        (entry(id="i-late", zone="a", availability_set="s"), "instances[{n}]: a machine is either in a zone"),
        (entry(id="i-000001"), 'instances[{n}].id: duplicate id "i-000001" (also instances[1])'),
    ],
    ids=["invalid", "duplicate"],
)
def test_a_problem_in_a_late_slice_is_named_as_the_whole_file_names_it(
    tmp_path: Path, late: dict[str, Any], expected: str
) -> None:
    """The slices consume the document: a problem found in one is named from the file read again."""
    entries = [entry(id=f"i-{n:06d}") for n in range(2 * SLICE)]
    path = tmp_path / "inv.json"
    path.write_text(json.dumps({"instances": [*entries, late]}))
    with pytest.raises(InputError) as caught:
        load_inventory(str(path))
    with pytest.raises(InputError) as whole:
        parse_inventory({"instances": [*entries, late]}, str(path))
    assert caught.value.render() == whole.value.render()
    assert expected.format(n=2 * SLICE) in caught.value.render()
