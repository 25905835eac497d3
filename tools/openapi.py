#!/usr/bin/env python3
"""Writes docs/openapi.json, the agent's API contract: `python3 tools/openapi.py docs/openapi.json`.

Edit the API's document here, then regenerate: tests/it/api_contract.rs checks that the file is
what this writes, that the agent serves it, that its enums and routes are the code's (the http
module's unit test), and schemathesis fuzzes it against a live agent. Rules: docs/api.md.
"""
import json
import os
import re

# The check types, in the code's order: the variants of `[[checks]]` in the shipped JSON Schema
# (`bastion config schema`), so a new type reaches the contract without a line here.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(_ROOT, "config", "bastion.schema.json")) as _file:
    TYPES = [variant["properties"]["type"]["const"]
             for variant in json.load(_file)["$defs"]["CheckConfig"]["oneOf"]]
T = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC"}
def ref(n): return {"$ref": f"#/components/schemas/{n}"}
def nullable(s): return {"oneOf": [s, {"type": "null"}]}
def obj(props, required=None, desc=None):
    o = {"type": "object", "properties": props, "required": required if required is not None else list(props)}
    if desc: o["description"] = desc
    return o
num = {"type": "number", "minimum": 0}
cnt = {"type": "integer", "minimum": 0}
text = {"type": "string"}
boolean = {"type": "boolean"}
err_json = {"application/json": {"schema": ref("Error")}}
def err(desc): return {"description": desc, "content": err_json}
plain = {"text/plain": {"schema": text}}

# Each check type's own section of a response, as its registration line in src/checks/mod.rs
# names it (`"udp" => Udp(udp::UdpSpec, UdpDetails)`), read with its doc comments from the
# struct in its type's file: a new type reaches the contract without a line here. The reading
# refuses what it does not understand rather than guess a schema.
def _sections():
    with open(os.path.join(_ROOT, "src", "checks", "mod.rs")) as file:
        source = file.read()
    block = source[source.index("\ncheck_types! {"):]
    block = block[:block.index("\n}")]
    found = []
    for line in block.splitlines()[2:]:
        if not line.strip() or line.strip().startswith("//"):
            continue
        match = re.fullmatch(r'\s*"(\w+)" => \w+\((\w+)::\w+(?:, (\w+))?\),', line)
        if not match or match.group(1) != match.group(2):
            raise SystemExit(f"tools/openapi.py cannot read this registration line: {line.strip()}")
        if match.group(3):
            found.append((match.group(1), match.group(3)))
    return found
SECTIONS = _sections()
# The Rust types sections use, as JSON.
RUST_TYPES = {"bool": boolean, "String": text, "usize": cnt, "u32": cnt, "u64": cnt, "f64": num,
              "u16": {"type": "integer", "minimum": 0, "maximum": 65535},
              "Vec<String>": {"type": "array", "items": text}}
# What a field's Rust type cannot say.
REFINED = {("IcmpDetails", "loss"): {"maximum": 100},
           ("IcmpDetails", "socket"): {"enum": ["datagram", "raw"]}}

def section_schemas():
    out = {}
    for name, section in SECTIONS:
        where = f"src/checks/{name}.rs"
        with open(os.path.join(_ROOT, where)) as file:
            source = file.read()
        found = re.search(r"((?:^///[^\n]*\n)*)(?:^#\[[^\n]*\n)*^pub struct " + section + r" \{\n(.*?)^\}", source, re.M | re.S)
        if not found:
            raise SystemExit(f"{where} declares no `pub struct {section}`")
        props, required, doc, attributes, pending = {}, [], [], [], ""
        for line in found.group(2).splitlines():
            line = line.strip()
            if pending or line.startswith("#["):
                pending += line
                if pending.endswith("]"):
                    attributes.append(pending)
                    pending = ""
                continue
            if not line or line.startswith("//") and not line.startswith("///"):
                continue
            if line.startswith("///"):
                doc.append(line[3:].strip())
                continue
            field = re.fullmatch(r"pub (\w+): (.+),", line)
            if not field:
                raise SystemExit(f"{where}: `{line}` in {section}: every field of a section is in the contract; write it `pub name: Type,`")
            name_, rust = field.groups()
            skip = False
            for attribute in attributes:
                if not attribute.startswith("#[serde("):
                    continue
                for part in re.findall(r'(\w+)(?:\s*=\s*"[^"]*")?', attribute[len("#[serde("):]):
                    if part == "skip_serializing_if":
                        skip = True
                    elif part not in ("default",):
                        raise SystemExit(f"{where}: {section}.{name_}: tools/openapi.py does not understand #[serde({part} ...)]; teach it, or leave it out")
            optional = rust.startswith("Option<")
            rust = rust[len("Option<"):-1] if optional else rust
            if rust not in RUST_TYPES:
                raise SystemExit(f"{section}.{name_}: add its type {rust} to RUST_TYPES in tools/openapi.py")
            schema = dict(RUST_TYPES[rust], **REFINED.get((section, name_), {}))
            schema["description"] = " ".join(doc)
            props[name_] = nullable(schema) if optional and not skip else schema
            if not skip:
                required.append(name_)
            doc, attributes = [], []
        description = " ".join(line[3:].strip() for line in found.group(1).splitlines())
        out[section] = obj(props, required=required, desc=description)
    return out

schemas = {
 "Error": obj({"error": {"type": "string", "description": "What was wrong, and what to ask instead."}}, desc="The body of every JSON API error."),
 "CheckState": {"type": "string", "enum": ["OK", "WARN", "FAIL_WAIT", "FAIL", "PASS_WAIT"]},
 "CheckType": {"type": "string", "enum": TYPES},
 "ErrorKind": {"type": "string", "enum": ["resolve", "connect", "tls", "http", "body", "expect", "dns", "icmp", "grpc", "auth", "timeout", "dispatch_timeout", "no_runner", "internal"]},
 "ProbeError": obj({"kind": ref("ErrorKind"), "message": text}),
 "Timings": obj({
    "resolve": num, "connect": num, "proxy": num, "starttls": num, "tls": num, "processing": num, "transfer": num,
    "exchange": num, "request": num, "rtt": num, "total": num},
    required=["resolve", "connect", "tls", "processing", "transfer", "total"],
    desc="Phase durations in seconds; a phase not reached is 0. proxy, starttls, exchange, request and rtt appear only when not 0."),
 "HttpDetails": obj({
    "status": {"type": "integer", "minimum": 0, "maximum": 65535},
    "version": text,
    "headers": {"type": "object", "additionalProperties": text},
    "body": text, "truncated": boolean, "body_bytes": cnt, "headers_truncated": boolean,
    "redirects": cnt}, required=["status", "version", "headers", "body", "truncated", "redirects"]),
 "CertificateDetails": obj({"subject": text, "issuer": text, "san": {"type": "array", "items": text}, "not_before": T, "not_after": T}),
 "ChainDetails": obj({"valid": boolean, "error": text, "certificates": {"type": "array", "items": ref("CertificateDetails")}}, required=["valid", "certificates"]),
 "TlsDetails": obj({"version": text, "alpn": nullable(text), "earliest_cert_expiry": nullable(T), "chain": ref("ChainDetails")}, required=["version", "alpn", "earliest_cert_expiry"]),
 "AssertionResult": obj({"key": text, "value": text, "relationship": text, "operand": text, "passing": boolean, "actual": text, "message": text}, required=["key", "value", "relationship", "operand", "passing", "actual"]),
 "Response": obj({
    "target": {"type": "string", "description": "The ip:port probed (host:port when the host did not resolve)."},
    "passing": boolean,
    "error": nullable(ref("ProbeError")),
    "http": nullable(ref("HttpDetails")),
    "tls": nullable(ref("TlsDetails")),
    **{name: ref(section) for name, section in SECTIONS},
    "labels": {"type": "object", "additionalProperties": text, "description": "The check's labels and the instance's own (file discovery); absent when none."},
    "timings": ref("Timings"),
    "assertions": {"type": "array", "items": ref("AssertionResult")}},
    required=["target", "passing", "error", "http", "tls", "timings", "assertions"],
    desc="What one instance answered."),
 "Degraded": obj({"form": {"type": "string", "enum": ["detail_dropped", "summarised"]}, "instances": cnt, "failing": cnt, "omitted": cnt, "unmeasured": cnt,
    "locations": {"type": "array", "items": ref("LocationCounts"),
        "description": "In the combined view of a check with locations, which incidents and notifications describe: each location's counts. Absent otherwise."}},
    required=["form", "instances", "failing", "omitted", "unmeasured"]),
 "LocationCounts": obj({"location": text, "instances": cnt, "failing": cnt, "unmeasured": cnt}),
 "CheckResult": obj({
    "version": {"type": "integer", "minimum": 1},
    "check": text, "type": ref("CheckType"),
    "agent": {"type": "string", "description": "The agent that ran the probes (the checker, for a no_runner result)."},
    "location": {"type": "string", "description": "For a check with locations: the location the run was for. Absent otherwise."},
    "run_id": cnt, "scheduled_at": T, "finished_at": T, "passing": boolean,
    "responses": {"type": "array", "items": ref("Response")},
    "degraded": ref("Degraded")},
    required=["version", "check", "type", "agent", "run_id", "scheduled_at", "finished_at", "passing", "responses"],
    desc="Every instance's response to one run of one check (docs/results.md)."),
 "CheckSummary": obj({
    "name": text, "type": ref("CheckType"), "group": text,
    "interval": {"type": "string", "description": "A duration as humantime writes it, e.g. `30s`, `1m 30s`."},
    "state": ref("CheckState"), "state_since": T,
    "latest": nullable(ref("CheckResult")),
    "locations": {"type": "array", "items": ref("LocationSummary"),
        "description": "For a check with locations: each location's own state and latest result; state is then the judgement across them. Absent otherwise."}},
    required=["name", "type", "interval", "state", "state_since", "latest"]),
 "LocationSummary": obj({"location": text, "state": ref("CheckState"), "state_since": T,
    "latest": nullable(ref("CheckResult"))},
    required=["location", "state", "state_since", "latest"]),
 "Uptimes": obj({"24h": nullable(num), "7d": nullable(num), "30d": nullable(num)}),
 "CheckDetail": {"allOf": [ref("CheckSummary"), {"type": "object", "properties": {
    "uptime": nullable(ref("Uptimes")),
    "history_error": {"type": "string", "description": "Why uptime is missing: the history database did not answer in time, or is not open."}}}]},
 "Percentiles": obj({"p50": num, "p90": num, "p99": num, "samples": cnt}),
 "Latency": {"type": "object", "description": "Per phase that had samples (over passing instances), seconds.",
    "properties": {p: ref("Percentiles") for p in ["resolve", "connect", "tls", "processing", "transfer", "total"]},
    "additionalProperties": False},
 "Point": obj({"start": T, "runs": cnt, "down": cnt, "unmeasured": cnt, "uptime": nullable({"type": "number", "minimum": 0, "maximum": 1}), "latency": ref("Latency")}),
 "InstanceSeries": obj({"instance": {"type": "string", "description": "The instance's address; in a check with locations' combined series, `location/address`."}, "points": {"type": "array", "items": ref("Point")}}),
 "LocationSeries": obj({"location": text, "points": {"type": "array", "items": ref("Point")}}, desc="One location's own runs, judged over its instances."),
 "Series": obj({"check": text,
    "location": {"type": "string", "description": "With location=: the location whose own runs these are. Absent for the check's own (for a check with locations, combined) runs."},
    "from": T, "to": T, "step_seconds": {"type": "integer", "minimum": 1},
    "source": {"type": "string", "enum": ["runs", "hourly", "daily"]},
    "points": {"type": "array", "items": ref("Point")},
    "locations": {"type": "array", "items": ref("LocationSeries"), "description": "With by=location: one series per location, beside the combined points."},
    "instances": {"type": "array", "items": ref("InstanceSeries")}},
    required=["check", "from", "to", "step_seconds", "source", "points"]),
 "Cause": obj({"instance": text, "error_kind": nullable(ref("ErrorKind")), "message": nullable(text)}),
 "Incident": obj({"id": {"type": "integer"}, "check": text, "started_at": T, "confirmed_at": T, "ended_at": nullable(T),
    "duration_seconds": num, "open": boolean, "interrupted": boolean,
    "end_reason": nullable({"type": "string", "enum": ["recovered", "check_changed", "check_removed", "interrupted"]}),
    "severity": {"type": "string", "enum": ["critical", "warning"]},
    "episode_id": nullable(text),
    "cause": {"type": "array", "items": ref("Cause")}}),
}

schemas.update(section_schemas())

name_param = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}, "description": "The check's name."}
unauth = {"description": "Basic auth is configured and the request carries no valid credentials.", "content": plain,
          "headers": {"WWW-Authenticate": {"schema": text}}}
secured = [{"basicAuth": []}, {}]
def q(name, desc, schema=None, **kw):
    p = {"name": name, "in": "query", "required": False, "schema": schema or text, "description": desc}
    p.update(kw); return p
def csv_enum(name, values, desc, min_items=1):
    both = values + [v.lower() if v.isupper() else v.upper() for v in values]
    return {"name": name, "in": "query", "required": False, "style": "form", "explode": False,
            "schema": {"type": "array", "minItems": min_items, "items": {"type": "string", "enum": both}}, "description": desc}
STATES = ["OK", "WARN", "FAIL_WAIT", "FAIL", "PASS_WAIT"]
listq = lambda desc: {"type": "string", "description": desc}

paths = {
 "/healthz": {"get": {"operationId": "healthz", "summary": "Liveness: the process answers.", "tags": ["health"],
    "responses": {"200": {"description": "Alive.", "content": plain}}}},
 "/readyz": {"get": {"operationId": "readyz", "summary": "Readiness: started and connected to its bus.", "tags": ["health"],
    "responses": {"200": {"description": "Ready.", "content": plain}, "503": {"description": "Starting, stopping, or the bus is disconnected.", "content": plain}}}},
 "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus text exposition of the probe_* and bastion_* series (docs/metrics.md).", "tags": ["metrics"], "security": secured,
    "description": "Without parameters, every series. `group` and `checks` let a scraper take less (docs/metrics.md, Scraping many checks); the agent-wide series (no `check` label) are in every answer.",
    "parameters": [
        {"name": "group", "in": "query", "required": False, "style": "form", "explode": True,
         "schema": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1, "pattern": "^[^,]+(,[^,]+)*$"}},
         "description": "Repeatable, or comma-separated: the per-check series of the checks in these groups only. A group no check has selects nothing (not an error)."},
        q("checks", "`none`: the agent's own series only, no `check` label at all, whatever `group` says. `all`: every check (the default).", {"type": "string", "enum": ["all", "none"]})],
    "responses": {"200": {"description": "The series.", "content": {"text/plain": {"schema": text}}},
        "400": err("An unknown parameter, an empty value, or checks given as both all and none: the error says what is accepted."),
        "401": unauth}}},
 "/probe": {"get": {"operationId": "probe", "summary": "blackbox_exporter's multi-target endpoint: probe one target now with a module of agent.blackbox_modules (docs/blackbox.md).", "tags": ["metrics"], "security": secured,
    "parameters": [
        {"name": "target", "in": "query", "required": True, "schema": text, "description": "What to probe: a URL for http modules, host:port for tcp and grpc, a host for icmp and dns."},
        q("module", "The module of blackbox.yml to probe with. Default: http_2xx."),
        q("debug", "`true`: the probe's log, its series and the result JSON instead of the series.", {"type": "string", "enum": ["true", "false"]}),
        q("instances", "`all`: probe every address behind the target's name, each series labelled `instance_address`.", {"type": "string", "enum": ["all"]}),
        {"name": "X-Prometheus-Scrape-Timeout-Seconds", "in": "header", "required": False, "schema": text, "description": "Prometheus' scrape timeout: the probe gets it less 0.5 s, or the module's timeout if shorter."}],
    "responses": {"200": {"description": "blackbox_exporter's series for this probe (probe_success 0 when it failed), or the debug output.", "content": {"text/plain": {"schema": text}}},
        "400": {"description": "A parameter is missing or not valid: the text says what to fix.", "content": {"text/plain": {"schema": text}}},
        "503": {"description": "Too many /probe requests at once, or this agent runs no probes (role checker).", "content": {"text/plain": {"schema": text}}},
        "401": unauth}}},
 "/api/v1/openapi.json": {"get": {"operationId": "openapi", "summary": "This document.", "tags": ["api"],
    "responses": {"200": {"description": "The OpenAPI 3.1 document.", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
 "/api/v1/checks": {"get": {"operationId": "listChecks", "summary": "Every configured check with its state and latest result.", "tags": ["api"], "security": secured,
    "description": "Without `limit` or `after`, every check in the configuration's order. With either, one page in the order of the names: at most `limit` checks (1000 when only `after` is given), and a `Link: <...>; rel=\"next\"` header while more match. Filters are comma-separated lists; a check matches when it matches every filter given.",
    "parameters": [
        csv_enum("state", STATES, "States to keep, comma-separated, in any case; no empty or padded values."),
        csv_enum("type", TYPES, "Check types to keep, comma-separated, in any case; no empty or padded values."),
        q("group", "Groups to keep, comma-separated (empty: checks without a group)."),
        q("check", "Only the check of this name."),
        q("limit", "At most this many checks: one page, in the order of the names.", {"type": "integer", "minimum": 1, "maximum": 1000}),
        q("after", "Only checks whose names come after this one: the last name of the previous page."),
        {"name": "If-None-Match", "in": "header", "required": False, "schema": text, "description": "An ETag of an earlier answer: 304 when nothing in it changed."}],
    "responses": {
        "200": {"description": "The checks.", "headers": {"ETag": {"schema": text}, "Link": {"schema": text, "description": "The next page, while more checks match."}},
                "content": {"application/json": {"schema": {"type": "array", "items": ref("CheckSummary")}}}},
        "304": {"description": "Nothing changed since the ETag given.", "headers": {"ETag": {"schema": text}}},
        "400": err("A parameter is unknown or its value is not valid."),
        "401": unauth}}},
 "/api/v1/checks/{name}": {"get": {"operationId": "getCheck", "summary": "One check: its state, latest result and uptime.", "tags": ["api"], "security": secured,
    "parameters": [name_param],
    "responses": {"200": {"description": "The check.", "content": {"application/json": {"schema": ref("CheckDetail")}}},
        "400": err("The name is not readable (not UTF-8)."), "404": err("No check has that name."), "401": unauth}}},
 "/api/v1/checks/{name}/history": {"get": {"operationId": "getCheckHistory", "summary": "A check's uptime and latency over a range (docs/history.md).", "tags": ["api"], "security": secured,
    "parameters": [name_param,
        q("from", "Start: RFC 3339, `now`, or a duration ago such as `24h`. Default: 24 h before `to`."),
        q("to", "End: as `from`. Default: now."),
        q("step", "The width of a point, a duration such as `5m`. Default: about 60 points."),
        q("by", "`instance` adds one series per instance; `location` (a check with locations) one series per location beside the combined points.", {"type": "string", "enum": ["check", "instance", "location"]}),
        q("instance", "Comma-separated instance addresses: their series only (implies by=instance)."),
        q("location", "A check with locations: that location's own runs instead of the combined ones, which uptime follows (README.md#history).", {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"})],
    "responses": {"200": {"description": "The series.", "content": {"application/json": {"schema": ref("Series")}}},
        "400": err("A parameter is unknown or not valid, a location the check does not run from (or location= or by=location for a check without locations), or the answer would be too large (the message says what to ask instead)."),
        "404": err("No check has that name, or history is off."),
        "503": err("The history database did not answer in time, or is not open yet."), "401": unauth}}},
 "/api/v1/incidents": {"get": {"operationId": "listIncidents", "summary": "Failure incidents, newest first.", "tags": ["api"], "security": secured,
    "parameters": [q("check", "Only this check's incidents."),
        q("from", "Incidents that started after this time (as `from` above). Default: 30 days ago."),
        q("limit", "At most this many (1000 at most). Default: 100.", {"type": "integer", "minimum": 0})],
    "responses": {"200": {"description": "The incidents.", "content": {"application/json": {"schema": {"type": "array", "items": ref("Incident")}}}},
        "400": err("A parameter is unknown or not valid."), "404": err("History is off."),
        "503": err("The history database did not answer in time, or is not open yet."), "401": unauth}}},
 "/-/reload": {"post": {"operationId": "reload", "summary": "Reload the configuration, as SIGHUP does.", "tags": ["operations"], "security": secured,
    "responses": {"200": {"description": "Reloaded: what changed.", "content": plain},
        "403": {"description": "agent.web.reload_endpoint is false.", "content": plain},
        "500": {"description": "The new configuration is not valid; the running one is kept. The body says why.", "content": plain},
        "503": {"description": "This agent has no configuration file to reload.", "content": plain}, "401": unauth}}},
 "/": {"get": {"operationId": "statusPage", "summary": "The status page (when agent.web.status_page is not off).", "tags": ["pages"], "security": secured,
    "parameters": [csv_enum("state", STATES, "States to show, comma-separated (any case; empty: all).", 0), csv_enum("type", TYPES, "Check types to show, comma-separated (any case; empty: all).", 0),
        q("group", "Groups to show, comma-separated."), q("q", "Checks whose names contain this."),
        q("page", "The page of the list, from 1.", {"type": "integer", "minimum": 0}),
        q("per", "Checks a page.", {"type": "integer", "minimum": 0})],
    "responses": {"200": {"description": "HTML.", "content": {"text/html": {"schema": text}}},
        "400": {"description": "A parameter is not valid: an HTML page saying which, or plain text for a number that is not one.", "content": {"text/html": {"schema": text}, "text/plain": {"schema": text}}},
        "401": unauth}}},
 "/checks/{name}": {"get": {"operationId": "checkPage", "summary": "One check's page.", "tags": ["pages"], "security": secured,
    "parameters": [name_param, q("range", "The chart's range: 15m, 1h, 6h, 24h (the default, also for any other value), 7d or 30d.")],
    "responses": {"200": {"description": "HTML.", "content": {"text/html": {"schema": text}}}, "404": {"description": "No check has that name.", "content": {"text/html": {"schema": text}}}, "401": unauth}}},
 "/assets/status.css": {"get": {"operationId": "statusCss", "summary": "The status page's style sheet.", "tags": ["pages"], "security": secured,
    "responses": {"200": {"description": "CSS.", "content": {"text/css": {"schema": text}}}, "401": unauth}}},
 "/assets/status.js": {"get": {"operationId": "statusJs", "summary": "The status page's live-refresh script.", "tags": ["pages"], "security": secured,
    "responses": {"200": {"description": "JavaScript.", "content": {"text/javascript": {"schema": text}}}, "401": unauth}}},
 "/badge/{check}/status.svg": {"get": {"operationId": "statusBadge", "summary": "A badge of the check's state.", "tags": ["pages"], "security": secured,
    "parameters": [{"name": "check", "in": "path", "required": True, "schema": text}],
    "responses": {"200": {"description": "SVG.", "content": {"image/svg+xml": {"schema": text}}}, "404": {"description": "Unknown check (a grey badge).", "content": {"image/svg+xml": {"schema": text}}}, "401": unauth}}},
 "/badge/{check}/uptime/{window}": {"get": {"operationId": "uptimeBadge", "summary": "A badge of the check's uptime.", "tags": ["pages"], "security": secured,
    "parameters": [{"name": "check", "in": "path", "required": True, "schema": text},
                   {"name": "window", "in": "path", "required": True, "schema": {"type": "string", "enum": ["24h", "7d", "30d", "24h.svg", "7d.svg", "30d.svg"]}}],
    "responses": {"200": {"description": "SVG.", "content": {"image/svg+xml": {"schema": text}}}, "404": {"description": "Unknown check or window (a grey badge).", "content": {"image/svg+xml": {"schema": text}}}, "401": unauth}}},
}

doc = {
 "openapi": "3.1.0",
 "info": {"title": "bastion agent API", "version": "1",
          "description": "The HTTP API of a bastion agent. Rules (versioning, errors, authentication, paging, caching): docs/api.md."},
 "paths": paths,
 "components": {"schemas": schemas, "securitySchemes": {"basicAuth": {"type": "http", "scheme": "basic", "description": "When agent.web.basic_auth_users is set."}}},
}
import sys
json.dump(doc, open(sys.argv[1], "w"), indent=2)
open(sys.argv[1], "a").write("\n")
