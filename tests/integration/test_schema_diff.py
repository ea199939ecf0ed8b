"""The schema checker (engine/codec/schema.c) against Python's jsonschema
(Debian python3-jsonschema, Draft202012Validator) on seeded random schemas
of the supported subset and documents made to land on both sides of each
keyword. build/tools/schema_check reads a schema file and one JSON document
per line, converts each with the engine's JSON reader and prints valid or
invalid; every verdict must agree with jsonschema's."""
import json
import os
import random
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import SLUICE_BIN

jsonschema = pytest.importorskip("jsonschema")

SCHEMA_CHECK = Path(SLUICE_BIN).resolve().parent / "tools" / "schema_check"

NAMES = ["a", "b", "id", "sku", "\u00e9t\u00e9", "n"]
STRINGS = ["", "a", "ab", "abc", "b1", "c", "12", "aaaa", "cab", "\u00e9",
           "\u00e9\U0001F600", "a-1", "x y", "ABC", "_", "abcabc", "9"]
NUMBERS = [-3, -1, 0, 1, 2, 3, 5, 8, -1.5, 0.5, 2.0, 2.5, 7.25, 100]


def gen_pattern(r):
    atoms = ["a", "b", "c", "[a-c]", "[^a]", "\\d", "\\w", ".", "(a|b)",
             "(?:ab|c)", "[0-9_]", "\\.", "-", "\\s", "[\\d-]", "x"]
    quants = ["", "", "", "*", "+", "?", "{1,2}", "{2}", "{0,}", "*?"]
    body = "".join(r.choice(atoms) + r.choice(quants)
                   for _ in range(r.randint(1, 3)))
    if r.random() < 0.3:
        body = body + "|" + r.choice(atoms)
    if r.random() < 0.5:
        body = "^" + body
    if r.random() < 0.4:
        body = body + "$"
    return body


def gen_value(r, depth=0):
    k = r.randrange(8 if depth < 2 else 5)
    if k == 0:
        return None
    if k == 1:
        return r.choice([True, False])
    if k == 2:
        return r.choice(NUMBERS)
    if k in (3, 4):
        return r.choice(STRINGS)
    if k == 5:
        return [gen_value(r, depth + 1) for _ in range(r.randint(0, 3))]
    return {r.choice(NAMES): gen_value(r, depth + 1)
            for _ in range(r.randint(0, 3))}


class Gen:
    def __init__(self, r):
        self.r = r
        self.defs = {}

    def number_schema(self, t):
        r = self.r
        s = {"type": t}
        if r.random() < 0.6:
            s["minimum"] = r.choice([-1, 0, 1, 2, 0.5, 2.5])
        if r.random() < 0.6:
            s["maximum"] = r.choice([2, 3, 5, 7.5, 2.0])
        return s

    def string_schema(self):
        r = self.r
        s = {"type": "string"}
        if r.random() < 0.5:
            s["minLength"] = r.randint(0, 3)
        if r.random() < 0.5:
            s["maxLength"] = r.randint(1, 4)
        if r.random() < 0.5:
            s["pattern"] = gen_pattern(r)
        return s

    def object_schema(self, depth, data):
        r = self.r
        names = r.sample(NAMES, r.randint(0, 4))
        s = {"type": "object"} if r.random() < 0.8 else {}
        if names:
            s["properties"] = {n: self.schema(depth + 1, True) for n in names}
        req = [n for n in names if r.random() < 0.5]
        if r.random() < 0.2:
            req.append(r.choice(NAMES))
        if req:
            s["required"] = sorted(set(req))
        x = r.random()
        if x < 0.3:
            s["additionalProperties"] = False
        elif x < 0.5:
            s["additionalProperties"] = self.schema(depth + 1, True)
        elif x < 0.6:
            s["additionalProperties"] = True
        return s

    def array_schema(self, depth):
        r = self.r
        s = {"type": "array"} if r.random() < 0.8 else {}
        if r.random() < 0.8:
            s["items"] = self.schema(depth + 1, True)
        if r.random() < 0.4:
            s["minItems"] = r.randint(0, 2)
        if r.random() < 0.4:
            s["maxItems"] = r.randint(1, 3)
        return s

    def schema(self, depth=0, data=False, defs_ok=True):
        r = self.r
        if depth >= 3:
            return r.choice([{"type": "string"}, {"type": "integer"}, {},
                             {"enum": [1, "a", None]}, True])
        kinds = ["string", "number", "integer", "boolean", "null", "object",
                 "object", "array", "enum", "const", "anyOf", "oneOf",
                 "typelist", "bool", "nothing"]
        if data:
            kinds.append("root")
        if defs_ok and self.defs:
            kinds += ["def", "def"]
        k = r.choice(kinds)
        if k == "string":
            return self.string_schema()
        if k in ("number", "integer"):
            return self.number_schema(k)
        if k in ("boolean", "null"):
            return {"type": k}
        if k == "object":
            return self.object_schema(depth, data)
        if k == "array":
            return self.array_schema(depth)
        if k == "enum":
            return {"enum": [gen_value(r, 1) for _ in range(r.randint(1, 4))]}
        if k == "const":
            return {"const": gen_value(r, 1)}
        if k in ("anyOf", "oneOf"):
            return {k: [self.schema(depth + 1, data, defs_ok)
                        for _ in range(r.randint(1, 3))]}
        if k == "typelist":
            return {"type": r.sample(["string", "null", "integer", "number",
                                      "boolean", "array", "object"],
                                     r.randint(1, 3))}
        if k == "bool":
            return r.random() < 0.8
        if k == "root":
            return {"$ref": "#"}
        if k == "def":
            return {"$ref": "#/$defs/" + r.choice(sorted(self.defs))}
        # no type: keywords of several types side by side
        s = {}
        s.update({kk: v for kk, v in self.string_schema().items()
                  if kk != "type"})
        s.update({kk: v for kk, v in self.number_schema("number").items()
                  if kk != "type"})
        return s

    def root(self):
        r = self.r
        if r.random() < 0.3:
            for i in range(r.randint(1, 2)):
                self.defs["d%d" % i] = self.schema(1, False, defs_ok=False)
        s = self.schema(0)
        if not isinstance(s, dict):
            s = {"anyOf": [s]}
        if self.defs:
            s["$defs"] = self.defs
        if r.random() < 0.2:
            s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
            s["title"] = "t"
        return s


def resolve(root, s):
    ref = s.get("$ref") if isinstance(s, dict) else None
    if ref == "#":
        return root
    if ref:
        return root["$defs"][ref.split("/")[-1]]
    return s


def gen_doc(r, root, s, depth=0):
    """A document aimed at schema s: mostly near it, sometimes anything."""
    if depth > 4 or r.random() < 0.15 or not isinstance(s, dict):
        return gen_value(r, 1)
    s2 = resolve(root, s)
    if s2 is not s:
        return gen_doc(r, root, s2, depth + 1)
    for k in ("anyOf", "oneOf"):
        if k in s:
            return gen_doc(r, root, r.choice(s[k]), depth + 1)
    if "enum" in s and r.random() < 0.7:
        v = r.choice(s["enum"])
        if isinstance(v, int) and not isinstance(v, bool) and r.random() < .3:
            v = float(v)  # 1.0 equals 1
        return v
    if "const" in s and r.random() < 0.7:
        return s["const"]
    t = s.get("type")
    if isinstance(t, list):
        t = r.choice(t)
    if t in ("number", "integer") or "minimum" in s or "maximum" in s:
        lo, hi = s.get("minimum", -3), s.get("maximum", 8)
        v = r.choice([lo, hi, lo - 1, hi + 1, lo + 0.5, hi - 0.5,
                      r.choice(NUMBERS)])
        if t == "integer" and r.random() < 0.7:
            v = int(v)
        return v
    if t == "string" or "pattern" in s or "minLength" in s:
        return r.choice(STRINGS)
    if t == "object" or "properties" in s or "required" in s:
        props = s.get("properties", {})
        d = {}
        for n in props:
            if r.random() < 0.75:
                d[n] = gen_doc(r, root, props[n], depth + 1)
        for n in s.get("required", []):
            if n not in d and r.random() < 0.8:
                d[n] = gen_value(r, 2)
        if r.random() < 0.3:
            extra = s.get("additionalProperties", True)
            d["zz"] = gen_doc(r, root, extra, depth + 1)
        return d
    if t == "array" or "items" in s:
        n = r.choice([0, 1, 2, 3, s.get("minItems", 0), s.get("maxItems", 2)])
        return [gen_doc(r, root, s.get("items", {}), depth + 1)
                for _ in range(n)]
    if t == "boolean":
        return r.choice([True, False])
    if t == "null":
        return None
    return gen_value(r, 1)


def ascii_classes(s):
    """The schema as Python must read it: ECMA-262's \\d \\w \\s are ASCII,
    Python's are Unicode unless the pattern says (?a)."""
    if isinstance(s, dict):
        return {k: ("(?a)" + v if k == "pattern" else ascii_classes(v))
                if k not in ("enum", "const") else v for k, v in s.items()}
    if isinstance(s, list):
        return [ascii_classes(v) for v in s]
    return s


def run_checker(schema, docs):
    with tempfile.TemporaryDirectory() as d:
        sp = os.path.join(d, "schema.json")
        dp = os.path.join(d, "docs.ndjson")
        with open(sp, "w", encoding="utf-8") as f:
            json.dump(schema, f, ensure_ascii=False)
        with open(dp, "w", encoding="utf-8") as f:
            for doc in docs:
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")
        p = subprocess.run([str(SCHEMA_CHECK), sp, dp], capture_output=True,
                           text=True, timeout=60)
    assert p.returncode == 0, "schema refused: %s\n%s" % (
        p.stderr, json.dumps(schema))
    lines = p.stdout.splitlines()
    assert len(lines) == len(docs)
    return lines


def test_checker_agrees_with_python_jsonschema_on_generated_documents():
    r = random.Random(16)
    total = 0
    valid = 0
    mismatches = []
    for _ in range(260):
        g = Gen(r)
        schema = g.root()
        jsonschema.Draft202012Validator.check_schema(schema)
        v = jsonschema.Draft202012Validator(ascii_classes(schema))
        docs = [gen_doc(r, schema, schema) for _ in range(10)]
        for doc, line in zip(docs, run_checker(schema, docs)):
            want = v.is_valid(doc)
            got = line == "valid"
            assert line == "valid" or line.startswith("invalid"), line
            total += 1
            valid += want
            if want != got:
                mismatches.append((schema, doc, line))
    assert not mismatches, "\n".join(
        "schema %s\n  doc %s: jsonschema says %s, sluice says %s" % (
            json.dumps(s), json.dumps(d), not l.startswith("valid"), l)
        for s, d, l in mismatches[:8])
    assert total >= 2000
    # both sides of the keywords were reached
    assert total * 0.25 < valid < total * 0.75, (valid, total)


def test_checker_error_names_the_path_jsonschema_finds():
    schema = {"type": "object", "properties": {"items": {"type": "array",
              "items": {"type": "object", "properties": {"sku": {
                  "type": "string", "pattern": "^[A-Z]+$"}}}}}}
    doc = {"items": [{"sku": "AB"}, {"sku": "ab"}]}
    err = next(jsonschema.Draft202012Validator(schema).iter_errors(doc))
    want = "".join("/" + str(p) for p in err.absolute_path)
    assert run_checker(schema, [doc]) == [
        "invalid %s: a string matching \"^[A-Z]+$\"" % want]


def test_pattern_agrees_with_python_re_on_generated_patterns():
    """The NFA against Python's re (ASCII classes, as ECMA-262) on random
    patterns of the subset: groups, alternation, classes and every
    quantifier form, over strings without line breaks."""
    import re
    r = random.Random(1616)
    alphabet = "abcx19-_. \u00e9"
    mismatches = []
    total = 0
    for _ in range(120):
        pat = gen_pattern(r)
        if r.random() < 0.5:
            pat = "(%s)%s" % (pat, r.choice(["*", "+", "?", "{1,3}", ""]))
        texts = ["".join(r.choice(alphabet) for _ in range(r.randint(0, 8)))
                 for _ in range(20)]
        lines = run_checker({"pattern": pat}, texts)
        want = re.compile(pat, re.ASCII)
        for t, line in zip(texts, lines):
            total += 1
            if (want.search(t) is not None) != (line == "valid"):
                mismatches.append((pat, t, line))
    assert not mismatches, mismatches[:8]
    assert total == 2400
