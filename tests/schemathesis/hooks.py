"""Schemathesis hooks for `tests/schemathesis/run`.

The fuzzer generates request bodies from the OpenAPI document. A few fields
of valid bodies make the demo node reach out: connectivity test addresses
(`test_ips`, ICMP or TCP), service checks (`checks`: HTTP, TCP or a
command run without a shell) and the primary's address of *Set up
relationship* (`primary`). This workplace allows traffic to loopback only,
and a fuzzer must not name a program to run, so `before_call` rewrites
those fields, right before each request is sent, to loopback addresses
that nothing listens on and to `true`. The rewrite keeps the shape
(strings stay strings, lists stay lists), so the server's validation of
everything else is still exercised. A check applies to every appliance
alike, so that it fails or passes on both and never moves the role by
itself; a failback never prefers the backup `b`, for the same reason.
"""

import ipaddress

import schemathesis

# Nothing listens on the discard port on loopback: a probe is refused.
LOOPBACK_V4 = "127.0.0.1"
LOOPBACK_V6 = "::1"
REFUSED_PORT = "9"
# Characters an IP address or `IP:port` can be written with. A string with
# any other character cannot name an address, and the node refuses it.
ADDRESS_CHARS = set("0123456789abcdefABCDEF.:[]%")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False


def _loopback_target(value):
    """A test address (`IP` or `IP:port`) that can only be on loopback."""
    if not isinstance(value, str) or not value or not set(value) <= ADDRESS_CHARS:
        return value
    if _is_loopback(value):
        return value
    host, sep, port = value.rpartition(":")
    if sep and _is_loopback(host):
        return value
    if sep and port.isdigit() and (host.startswith("[") or ":" not in host):
        loop = f"[{LOOPBACK_V6}]" if host.startswith("[") else LOOPBACK_V4
        return f"{loop}:{port}"
    return LOOPBACK_V6 if ":" in value else LOOPBACK_V4


def _check_target(kind, value):
    if not isinstance(value, str) or not value.strip():
        return value
    if kind == "http":
        return f"http://{LOOPBACK_V4}:{REFUSED_PORT}/"
    return f"{LOOPBACK_V4}:{REFUSED_PORT}"


def _safe_check(check):
    if not isinstance(check, dict):
        return check
    kind = check.get("kind")
    if "target" in check:
        check["target"] = _check_target(kind, check["target"])
    if isinstance(check.get("targets"), dict):
        check["targets"] = {
            node: _check_target(kind, target) for node, target in check["targets"].items()
        }
    if isinstance(check.get("command"), list) and check["command"]:
        check["command"] = ["true"]
    if isinstance(check.get("nodes"), list):
        check["nodes"] = []
    return check


def _safe_settings(body):
    if isinstance(body.get("test_ips"), list):
        body["test_ips"] = [_loopback_target(t) for t in body["test_ips"]]
    if isinstance(body.get("checks"), list):
        body["checks"] = [_safe_check(c) for c in body["checks"]]
    failback = body.get("failback")
    if isinstance(failback, dict) and failback.get("preferred") == "b":
        failback["preferred"] = "a"


def _safe_setup(body):
    primary = body.get("primary")
    if isinstance(primary, str) and primary.strip():
        body["primary"] = f"https://{LOOPBACK_V4}:{REFUSED_PORT}"


@schemathesis.hook
def before_call(context, case, kwargs):
    if not isinstance(case.body, dict):
        return
    path = case.operation.path
    if path == "/api/v1/settings":
        _safe_settings(case.body)
    elif path == "/api/v1/relationship/setup":
        _safe_setup(case.body)
