"""A CRD's structural openAPIV3Schema as a JSON Schema (draft 4) validator, so a custom object
can be checked offline the way the API server checks it on `kubectl apply`.

The conversion keeps the API server's semantics for what it changes:
- `nullable: true` admits null;
- `x-kubernetes-int-or-string: true` admits an integer or a string;
- an object with `properties` refuses unknown fields (`additionalProperties: false`), which is
  what `kubectl apply` gets by default (field validation Strict: "unknown field spec.x"),
  unless it carries `x-kubernetes-preserve-unknown-fields: true`;
- `x-kubernetes-embedded-resource: true` admits apiVersion, kind and metadata;
- the root admits apiVersion, kind and metadata, which a CRD's schema may leave out.
Every other `x-kubernetes-*` key (list types, CEL `x-kubernetes-validations`, map types) is an
annotation here: CEL rules, immutability included, are checked against a real API server
(test_kubectl.py), not by this module.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema

_OBJECT_META = {"type": "object"}


def _convert(node: Any) -> Any:
    if isinstance(node, list):
        return [_convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: _convert(schema) for name, schema in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = _convert(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [_convert(schema) for schema in value]
        elif key.startswith("x-kubernetes-") or key == "nullable":
            continue
        else:
            out[key] = copy.deepcopy(value)

    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", _OBJECT_META)
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if node.get("nullable"):
        if "type" in out:
            types = out["type"] if isinstance(out["type"], list) else [out["type"]]
            out["type"] = types + ["null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = list(out["enum"]) + [None]
    return out


def version_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    """The openAPIV3Schema of one served version of `crd`, converted as described above."""
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    if version not in versions:
        raise KeyError(f"{crd['metadata']['name']} has no version {version}: {sorted(versions)}")
    schema = _convert(versions[version]["schema"]["openAPIV3Schema"])
    props = schema.setdefault("properties", {})
    props.setdefault("apiVersion", {"type": "string"})
    props.setdefault("kind", {"type": "string"})
    props.setdefault("metadata", _OBJECT_META)
    schema.setdefault("additionalProperties", False)
    return schema


def validator(crd: dict[str, Any], version: str) -> jsonschema.Draft4Validator:
    """A validator for objects of `crd` at `version` (OpenAPI 3.0 schemas are draft 4 style)."""
    schema = version_schema(crd, version)
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def errors(crd: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    """Every schema violation of `obj`, each as `<field path>: <message>` with the path of the
    field at fault, as the API server words it: `spec.replicas: -1 is less than the minimum of
    0`, `spec.bogus: unknown field`, `spec.ingress.host: Required value`. Empty means valid."""
    version = obj["apiVersion"].split("/", 1)[1]
    out = []
    for e in validator(crd, version).iter_errors(obj):
        path = ".".join(str(p) for p in e.absolute_path)
        prefix = f"{path}." if path else ""
        if e.validator == "additionalProperties":
            allowed = set(e.schema.get("properties", {}))
            out += [f"{prefix}{name}: unknown field" for name in e.instance if name not in allowed]
        elif e.validator == "required":
            out += [f"{prefix}{name}: Required value" for name in e.validator_value
                    if name not in e.instance]
        else:
            out.append(f"{path}: {e.message}")
    return sorted(out)
