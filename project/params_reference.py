"""The parameters reference (docs/reference/parameters.md, made when the docs are built): every key of params.yaml
with its type, range, default and description, read from the schema in project/config.py, where each is written
once. A key a section inherits (the training recipe's) keeps its description from the class that declares it."""

import json

from pydantic import BaseModel

from project.config import CheckpointTeacher, OnnxTeacher, PipelineParams, field_name

TYPES = {
    "integer": "integer",
    "number": "number",
    "boolean": "true/false",
    "string": "text",
    "object": "mapping",
    "null": "null",
}
BOUNDS = (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"))
ENTRY_KINDS = {  # the kinds of teachers.models entry that are mappings, each with keys of its own
    "teachers.models[]: {checkpoint: ...}": CheckpointTeacher,
    "teachers.models[]: {onnx: ...}": OnnxTeacher,
}


def description(schema: type[BaseModel], key: str) -> str:
    """The key's description, from the first class in `schema`'s bases that gives one."""
    for base in schema.__mro__:
        field = getattr(base, "model_fields", {}).get(key)
        if field is not None and field.description:
            return " ".join(field.description.split())
    return ""


def branches(prop: dict) -> list[dict]:
    return prop.get("anyOf") or prop.get("oneOf") or [prop]


def type_of(prop: dict) -> str:
    """A JSON-schema property's type in words: its choices, a list of what, a pair, or `or null`."""
    found = []
    for branch in branches(prop):
        if "enum" in branch:
            found.append(" \\| ".join(f"`{value}`" for value in branch["enum"]))
        elif "$ref" in branch:
            found.append("{" + branch["$ref"].rsplit("/", 1)[-1] + "}")
        elif branch.get("type") == "array" and "prefixItems" in branch:
            found.append("[" + ", ".join(type_of(item) for item in branch["prefixItems"]) + "]")
        elif branch.get("type") == "array":
            found.append(f"list of {type_of(branch['items'])}")
        elif branch.get("format") == "path":
            found.append("path")
        else:
            found.append(TYPES[branch["type"]])
    return " or ".join(found)


def range_of(prop: dict) -> str:
    """The bounds a value must keep: its own (or its non-null branch's), and each list item's."""
    found = []
    for branch in branches(prop):
        found += [f"{sign} {branch[key]}" for key, sign in BOUNDS if key in branch]
        items = [branch["items"]] if "items" in branch else branch.get("prefixItems", [])
        found += sorted({f"each {sign} {item[key]}" for item in items for key, sign in BOUNDS if key in item})
        if "minItems" in branch and branch.get("type") == "array" and "prefixItems" not in branch:
            found.append(f"at least {branch['minItems']}")
        if "pattern" in branch:
            found.append(f"matches `{branch['pattern']}`")
    return ", ".join(found)


def default_of(prop: dict) -> str:
    return f"`{json.dumps(prop['default'])}`" if "default" in prop else "required"


def table(schema: type[BaseModel]) -> list[str]:
    properties = schema.model_json_schema(by_alias=True)["properties"]
    lines = ["| key | type | range | default | description |", "|---|---|---|---|---|"]
    for key, prop in properties.items():
        text = description(schema, key).replace("|", "\\|")
        lines.append(f"| `{key}` | {type_of(prop)} | {range_of(prop)} | {default_of(prop)} | {text} |")
    return lines


def sections() -> dict[str, type[BaseModel]]:
    """Each params.yaml section by its name, with the model that checks it."""
    names = [field.alias or name for name, field in PipelineParams.model_fields.items()]
    return {name: PipelineParams.model_fields[field_name(name)].annotation for name in names}


def markdown() -> str:
    """The reference page: one table per params.yaml section, then the keys of each mapping kind of teacher."""
    lines = [
        "# Parameters",
        "",
        "Every key of `params.yaml`, section by section, generated from the schema in `project/config.py`, where each "
        "is described once. Unknown keys, wrong types and values out of range are refused, naming the key; keys that "
        "moved are refused with their new name.",
        "",
    ]
    for name, schema in sections().items():
        lines += [f"## `{name}`", "", " ".join(schema.__doc__.split()), "", *table(schema), ""]
    for title, schema in ENTRY_KINDS.items():
        lines += [f"## `{title}`", "", " ".join(schema.__doc__.split()), "", *table(schema), ""]
    return "\n".join(lines)
