#!/usr/bin/env python3
"""Checks captured webhook deliveries with an independent Standard Webhooks implementation.

    verify-webhooks.py CAPTURE.json

Run it with the venv's python (the `standardwebhooks` package from PyPI):
    "$(scripts/install-deps.sh standardwebhooks-python)" scripts/verify-webhooks.py CAPTURE.json

CAPTURE.json, written by the integration tests:
    {"deliveries": [{"name": "...", "secrets": ["whsec_...", ...],
                     "headers": {"webhook-id": "...", "webhook-timestamp": "...",
                                 "webhook-signature": "v1,... v1,..."},
                     "body": "<raw request body>", "expect": "valid" | "invalid"}]}

An entry is valid when Webhook(secret).verify(body, headers) succeeds for ANY of its secrets
(rotation: two secrets may sign). The library also rejects a webhook-timestamp more than
5 minutes away from now, so check a capture soon after it was written.
Exit: 0 every entry as expected (and at least one), 1 otherwise, 2 usage or parse error.
"""
import json
import sys
from importlib.metadata import version

try:
    from standardwebhooks.webhooks import Webhook
except ImportError:
    print(f"verify-webhooks: {sys.executable} has no `standardwebhooks` module; run this script "
          "with $(scripts/install-deps.sh standardwebhooks-python)", file=sys.stderr)
    sys.exit(2)


def verify(entry):
    """Returns (got, reason): got is "valid" or "invalid"; reason says why not, per secret."""
    reasons = []
    for i, secret in enumerate(entry["secrets"], 1):
        try:
            # json_parse=False: only the signature matters here, not whether the body is JSON.
            Webhook(secret).verify(entry["body"], entry["headers"], json_parse=False)
            return "valid", f"secret #{i} verifies"
        # Not only WebhookVerificationError: a malformed signature header raises ValueError,
        # bad base64 binascii.Error, a bad secret EmptyWebhookSecretError. All mean "invalid".
        except Exception as e:
            reasons.append(f"secret #{i}: {type(e).__name__}: {e}")
    return "invalid", "; ".join(reasons)


def load(path):
    """The capture's deliveries, checked for shape; raises ValueError when malformed."""
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    deliveries = doc.get("deliveries") if isinstance(doc, dict) else None
    if not isinstance(deliveries, list):
        raise ValueError('no "deliveries" list')
    for n, d in enumerate(deliveries, 1):
        where = f"deliveries[{n - 1}]"
        if not isinstance(d, dict):
            raise ValueError(f"{where}: not an object")
        d.setdefault("name", f"delivery {n}")
        d.setdefault("expect", "valid")
        if d["expect"] not in ("valid", "invalid"):
            raise ValueError(f'{where}: expect must be "valid" or "invalid", not {d["expect"]!r}')
        secrets = d.get("secrets")
        if not (isinstance(secrets, list) and secrets and all(isinstance(s, str) for s in secrets)):
            raise ValueError(f'{where}: "secrets" must be a non-empty list of strings')
        headers = d.get("headers")
        if not (isinstance(headers, dict) and all(isinstance(v, str) for v in headers.values())):
            raise ValueError(f'{where}: "headers" must be an object of strings')
        if not isinstance(d.get("body"), str):
            raise ValueError(f'{where}: "body" must be a string')
    return deliveries


def main(argv):
    if len(argv) != 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        deliveries = load(argv[1])
    except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        print(f"verify-webhooks: {argv[1]}: {e}", file=sys.stderr)
        return 2

    matched = 0
    for d in deliveries:
        got, reason = verify(d)
        ok = got == d["expect"]
        matched += ok
        print(f"{'ok  ' if ok else 'FAIL'} {d['name']}: expected {d['expect']}, got {got} ({reason})")
    print(f"standardwebhooks {version('standardwebhooks')}: {matched}/{len(deliveries)} as expected")
    return 0 if deliveries and matched == len(deliveries) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
