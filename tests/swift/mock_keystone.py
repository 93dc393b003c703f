#!/usr/bin/env python3
"""A Keystone v2.0 and v3 password-auth facade in front of Swift's TempAuth,
for the wal-e tests (loopback only; Debian's Keystone no longer serves v2.0).

    mock_keystone.py PORT TEMPAUTH_URL

Credentials (tenant or project, user, password) are checked by TempAuth as
user 'tenant:user' with key 'password'; its token is the Keystone token, so
Swift accepts it. The object-store catalog has two regions with three
interfaces each. Only RegionOne/public and RegionTwo/internal carry the real
storage URL; the others point back here, at /wrong/REGION/INTERFACE/..., which
answers 403, so a client that picks the wrong endpoint fails visibly.

v3 needs a domain for a user or project given by name, as Keystone does.
GET /stats returns {"tokens": N}, the number of tokens issued so far.
"""
import json
import sys
import threading
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
TEMPAUTH = sys.argv[2]
BASE = f"http://127.0.0.1:{PORT}"
REAL = {("RegionOne", "public"), ("RegionTwo", "internal")}
issued = 0
lock = threading.Lock()


def tempauth(tenant, user, password):
    req = urllib.request.Request(
        TEMPAUTH, headers={"X-Auth-User": f"{tenant}:{user}", "X-Auth-Key": password}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            token, url = r.headers["X-Auth-Token"], r.headers["X-Storage-Url"]
    except urllib.error.HTTPError:
        return None, None
    global issued
    with lock:
        issued += 1
    return token, url


def catalog_url(real_url, region, interface):
    if (region, interface) in REAL:
        return real_url
    account = real_url.rsplit("/", 1)[-1]
    return f"{BASE}/wrong/{region}/{interface}/v1/{account}"


def expires():
    return (datetime.now(timezone.utc) + timedelta(hours=12)).strftime("%Y-%m-%dT%H:%M:%SZ")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("mock-keystone: " + fmt % args + "\n")

    def send(self, code, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def error(self, code, message):
        self.send(code, {"error": {"code": code, "message": message}})

    def wrong_endpoint(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.error(403, "wrong endpoint " + self.path)
        self.close_connection = True

    def do_GET(self):
        if self.path.startswith("/wrong/"):
            return self.wrong_endpoint()
        if self.path == "/stats":
            with lock:
                return self.send(200, {"tokens": issued})
        self.error(404, "not found")

    do_HEAD = do_PUT = do_DELETE = do_GET

    def do_POST(self):
        if self.path.startswith("/wrong/"):
            return self.wrong_endpoint()
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        path = self.path.rstrip("/")
        if path == "/v2.0/tokens":
            return self.v2(body.get("auth", {}))
        if path == "/v3/auth/tokens":
            return self.v3(body.get("auth", {}))
        self.error(404, "not found")

    def v2(self, auth):
        creds = auth.get("passwordCredentials", {})
        tenant = auth.get("tenantName") or auth.get("tenantId") or ""
        token, url = tempauth(tenant, creds.get("username", ""), creds.get("password", ""))
        if not token:
            return self.error(401, "The request you have made requires authentication.")
        endpoints = [
            {
                "region": region,
                "publicURL": catalog_url(url, region, "public"),
                "internalURL": catalog_url(url, region, "internal"),
                "adminURL": catalog_url(url, region, "admin"),
                "id": f"ep-{region}",
            }
            for region in ("RegionOne", "RegionTwo")
        ]
        self.send(200, {"access": {
            "token": {"id": token, "expires": expires(),
                      "tenant": {"id": tenant, "name": tenant, "enabled": True}},
            "serviceCatalog": [
                {"type": "identity", "name": "keystone", "endpoints": [
                    {"region": "RegionOne", "publicURL": BASE + "/v2.0"}]},
                {"type": "object-store", "name": "swift", "endpoints": endpoints},
            ],
            "user": {"id": creds.get("username"), "name": creds.get("username"), "roles": []},
        }})

    def v3(self, auth):
        password = auth.get("identity", {}).get("password", {})
        user = password.get("user", {})
        scope = auth.get("scope", {}).get("project", {})
        if "name" in user and "domain" not in user:
            return self.error(400, "Expecting to find domain in user.")
        if "name" in scope and "domain" not in scope:
            return self.error(400, "Expecting to find domain in project.")
        tenant = scope.get("name") or scope.get("id") or ""
        token, url = tempauth(tenant, user.get("name") or user.get("id") or "", user.get("password", ""))
        if not token:
            return self.error(401, "The request you have made requires authentication.")
        endpoints = [
            {"id": f"ep-{region}-{interface}", "interface": interface, "region": region,
             "region_id": region, "url": catalog_url(url, region, interface)}
            for region in ("RegionOne", "RegionTwo")
            for interface in ("public", "internal", "admin")
        ]
        domain = {"id": "default", "name": "Default"}
        self.send(201, {"token": {
            "methods": ["password"], "expires_at": expires(),
            "user": {"id": user.get("name") or user.get("id"), "domain": domain},
            "project": {"id": tenant, "name": tenant, "domain": domain},
            "catalog": [{"type": "object-store", "name": "swift", "id": "swift",
                         "endpoints": endpoints}],
        }}, headers=[("X-Subject-Token", token)])


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
