"""Converts CustomResourceDefinition YAML into the JSON schemas kubeconform reads.

A port of kubeconform's `scripts/openapi2jsonschema.py` (itself from
instrumenta/openapi2jsonschema), so that validating a custom resource here
behaves as `kubeconform` does with schemas built by that script:

* every version's `openAPIV3Schema` becomes `<kind>_<version>.json` (lower
  case), the file name `{{ .ResourceKind }}_{{ .ResourceAPIVersion }}` of a
  kubeconform `-schema-location` template;
* nested objects that declare `properties` get `additionalProperties: false`
  (as kubectl's validation), so a misspelt field is an error rather than
  silently dropped by the API server. The root object is left open, because
  CRD schemas do not declare `apiVersion`, `kind` and `metadata`;
* `format: int-or-string` becomes `oneOf: [string, integer]`.

One deliberate difference: objects marked `x-kubernetes-preserve-unknown-fields`
stay open, since the API server keeps their unknown fields.

Usage::

    python crd_to_jsonschema.py OUT_DIR CRD.yaml [CRD.yaml ...]
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import yaml

__all__ = ['crd_schemas', 'strict_additional_properties', 'replace_int_or_string', 'main']


def strict_additional_properties(node: Any, is_root: bool = True) -> Any:
  """Closes every nested object schema that lists its properties."""
  if isinstance(node, dict):
    closable = (
      'properties' in node
      and not is_root
      and 'additionalProperties' not in node
      and not node.get('x-kubernetes-preserve-unknown-fields')
    )
    if closable:
      node['additionalProperties'] = False
    for value in node.values():
      strict_additional_properties(value, is_root=False)
  elif isinstance(node, list):
    for value in node:
      strict_additional_properties(value, is_root=False)
  return node


def replace_int_or_string(node: Any) -> Any:
  """Rewrites OpenAPI's `int-or-string` format into plain JSON Schema."""
  if isinstance(node, dict):
    if node.get('format') == 'int-or-string':
      return {'oneOf': [{'type': 'string'}, {'type': 'integer'}]}
    return {key: replace_int_or_string(value) for key, value in node.items()}
  if isinstance(node, list):
    return [replace_int_or_string(value) for value in node]
  return node


def crd_schemas(crd: dict) -> dict[str, dict]:
  """Maps `<kind>_<version>.json` to the JSON schema of each version of one CRD."""
  if not isinstance(crd, dict) or crd.get('kind') != 'CustomResourceDefinition':
    return {}
  spec = crd.get('spec') or {}
  kind = spec['names']['kind']
  schemas = {}
  for version in spec.get('versions') or []:
    # apiextensions.k8s.io/v1 puts the schema per version; v1beta1 once under spec.validation.
    openapi = (version.get('schema') or {}).get('openAPIV3Schema') or (spec.get('validation') or {}).get(
      'openAPIV3Schema'
    )
    if openapi is None:
      continue
    schema = replace_int_or_string(strict_additional_properties(json.loads(json.dumps(openapi))))
    schemas[f'{kind}_{version["name"]}.json'.lower()] = schema
  return schemas


def main(argv: list[str]) -> int:
  if len(argv) < 2:
    print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
    return 2
  out_dir = pathlib.Path(argv[0])
  out_dir.mkdir(parents=True, exist_ok=True)
  written = 0
  for crd_path in argv[1:]:
    try:
      documents = list(yaml.safe_load_all(pathlib.Path(crd_path).read_text(encoding='utf-8')))
    except (OSError, yaml.YAMLError) as error:
      print(f'crd_to_jsonschema: cannot read CRD {crd_path}: {error}', file=sys.stderr)
      return 1
    for document in documents:
      for name, schema in crd_schemas(document).items():
        (out_dir / name).write_text(json.dumps(schema, indent=2, sort_keys=True) + '\n', encoding='utf-8')
        written += 1
  if not written:
    print(f'crd_to_jsonschema: no CustomResourceDefinition schema in {" ".join(argv[1:])}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
