"""template.yaml as data: CloudFormation's short tags read into their JSON form (`!Ref X` becomes
{"Ref": "X"}, `!GetAtt A.B` {"Fn::GetAtt": ["A", "B"]}, `!Sub s` {"Fn::Sub": s}, `!If [...]`
{"Fn::If": [...]}), so that what a value refers to is kept. A plain `yaml.SafeLoader` with one
multi-constructor: cfn-lint's own loader lives in the separate linters' environment.

Used by infra/aws/check_package.py (the handlers) and tests/security/test_aws_template.py (who may
do what).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags, each read as the intrinsic function it stands for."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix in ("Ref", "Condition"):  # `!Condition X` stands for {"Condition": "X"}, not an Fn::
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        return {"Fn::GetAtt": value.split(".", 1)}
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _intrinsic)


def load(path: Path = TEMPLATE) -> dict[str, Any]:
    """The template at `path` (the repository's template.yaml by default)."""
    document: dict[str, Any] = yaml.load(path.read_text(), Loader=CfnLoader)  # a SafeLoader
    return document
