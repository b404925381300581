"""Validates spans against the Zipkin v2 API's Span schema, as a collector would.

    python zipkin_check.py SPEC.yaml SPANS.json

SPEC.yaml is zipkin2-api.yaml (a Swagger 2 document); SPANS.json a JSON array of spans, as
POSTed to /api/v2/spans. The spec's ID patterns are unanchored regular expressions; they are
anchored here (`^…$`) so that an ID with extra characters is refused. Prints `ok`, or every
violation and exits 1.
"""

import json
import sys

import jsonschema
import yaml


def anchor(node):
    if isinstance(node, dict):
        return {
            k: (f"^(?:{v})$" if k == "pattern" and isinstance(v, str) else anchor(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [anchor(v) for v in node]
    return node


def main():
    with open(sys.argv[1]) as f:
        spec = yaml.safe_load(f)
    with open(sys.argv[2]) as f:
        spans = json.load(f)
    schema = {"$ref": "#/definitions/ListOfSpans", "definitions": anchor(spec["definitions"])}
    validator = jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(spans), key=lambda e: list(e.path))
    for e in errors:
        print(f"{list(e.path)}: {e.message}")
    if errors:
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
