"""Run moto's server with a thin layer in front that enforces what moto does not:
the expiry of temporary credentials, and (when asked) a bucket policy that
requires server-side encryption on uploads.

    python moto_server.py PORT

moto issues session credentials with an expiration but accepts them forever. This
layer remembers every set of credentials STS hands out (AssumeRole and
AssumeRoleWithWebIdentity) with its expiry and answers any later request signed
with expired ones with 400 ExpiredToken, as AWS does. Tests steer it through
/_s3vol/sessions:

    GET  /_s3vol/sessions   {"expired_answers": N, "sts_calls": N, "s3_writes": N,
                             "web_identity_tokens": [...], "lifetime": ..., "sts": ...}
    POST /_s3vol/sessions   JSON with any of
        "lifetime": seconds  sessions issued from now on expire after this long (the
                             Expiration STS returns is rewritten to match), or null
                             for what the caller asked for
        "sts": "deny"|"allow"  answer every STS call AccessDenied (renewal fails)
        "revoke": true       every session issued so far counts as expired now (what
                             a revoked session or a skewed clock looks like)
        "require_sse": true  refuse (AccessDenied) every PutObject, CopyObject and
                             CreateMultipartUpload without x-amz-server-side-encryption,
                             as the usual "deny unencrypted uploads" bucket policy does
        "require_tls": true  refuse (AccessDenied) every S3 request, as a bucket
                             policy that denies aws:SecureTransport false does for
                             requests over plain http (this server only speaks http)

s3_writes counts S3 requests that change a bucket (PUT, POST, DELETE).

Everything else goes to moto unchanged, except that AssumeRoleWithWebIdentity is
let through without a signature (as AWS does; moto with authentication on fails
it). Run it with the Python of the moto virtualenv.
"""

import datetime
import io
import json
import os
import re
import sys
import threading
import urllib.parse

from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.sts.responses import TokenResponse

CONTROL_PATH = "/_s3vol/sessions"
CREDENTIAL = re.compile(r"Credential=([^/]+)/[^/]+/[^/]+/([^/]+)/aws4_request")


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


class Sessions:
    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.expiry = {}  # access key id -> datetime
        self.lifetime = None
        self.sts = "allow"
        self.expired_answers = 0
        self.sts_calls = 0
        self.s3_writes = 0
        self.require_sse = False
        self.require_tls = False
        self.web_identity_tokens = []
        # The secret keys and session tokens STS handed out, so tests can look
        # for them where they must not be.
        self.issued_secrets = []

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") == CONTROL_PATH:
            return self.control(environ, start_response)
        match = CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
        key, service = match.groups() if match else (None, None)
        if environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
            # STS calls are small forms; S3 bodies are passed on untouched.
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            environ["wsgi.input"] = io.BytesIO(body)
            form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
            action = form.get("Action", [""])[0]
            if action.startswith("AssumeRole"):
                return self.assume_role(environ, start_response, action, form)
        with self.lock:
            expiry = self.expiry.get(key)
            expired = expiry is not None and expiry <= utcnow()
            if expired:
                self.expired_answers += 1
        if expired:
            return error(start_response, "400 Bad Request", "ExpiredToken",
                         "The provided token has expired.", service)
        method = environ["REQUEST_METHOD"]
        with self.lock:
            require_tls = self.require_tls
        if service == "s3" and require_tls:
            return error(start_response, "403 Forbidden", "AccessDenied",
                         "Access Denied", service)
        if service == "s3" and method in ("PUT", "POST", "DELETE"):
            with self.lock:
                self.s3_writes += 1
                require_sse = self.require_sse
            if require_sse and self.unencrypted_upload(environ):
                return error(start_response, "403 Forbidden", "AccessDenied",
                             "uploads must ask for server-side encryption", service)
        return self.app(environ, start_response)

    @staticmethod
    def unencrypted_upload(environ):
        """PutObject, CopyObject or CreateMultipartUpload without an SSE header
        (parts inherit the upload's encryption and carry none)."""
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        method = environ["REQUEST_METHOD"]
        creates_object = (method == "PUT" and "partNumber" not in query
                          and environ.get("PATH_INFO", "/").count("/") >= 2) or (
                          method == "POST" and "uploads" in query)
        return creates_object and "HTTP_X_AMZ_SERVER_SIDE_ENCRYPTION" not in environ

    def assume_role(self, environ, start_response, action, form):
        with self.lock:
            self.sts_calls += 1
            if action == "AssumeRoleWithWebIdentity":
                self.web_identity_tokens.append(form.get("WebIdentityToken", [""])[0])
            deny, lifetime = self.sts == "deny", self.lifetime
        if deny:
            return error(start_response, "403 Forbidden", "AccessDenied",
                         "STS calls are switched off by the test", "sts")
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        text = b"".join(self.app(environ, capture)).decode()
        key = re.search(r"<AccessKeyId>([^<]+)</AccessKeyId>", text)
        with self.lock:
            for field in ("SecretAccessKey", "SessionToken"):
                found = re.search(rf"<{field}>([^<]+)</{field}>", text)
                if found:
                    self.issued_secrets.append(found.group(1))
        expiration = re.search(r"<Expiration>([^<]+)</Expiration>", text)
        if key and expiration:
            if lifetime is None:
                expiry = datetime.datetime.fromisoformat(expiration.group(1).replace("Z", "+00:00"))
            else:
                expiry = utcnow() + datetime.timedelta(seconds=lifetime)
                stamp = expiry.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                text = text.replace(expiration.group(0), f"<Expiration>{stamp}</Expiration>")
            with self.lock:
                self.expiry[key.group(1)] = expiry
        data = text.encode()
        headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(data))))
        start_response(captured["status"], headers)
        return [data]

    def control(self, environ, start_response):
        if environ["REQUEST_METHOD"] == "POST":
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            change = json.loads(body or b"{}")
            with self.lock:
                if "lifetime" in change:
                    self.lifetime = change["lifetime"]
                if "sts" in change:
                    self.sts = change["sts"]
                if "require_sse" in change:
                    self.require_sse = bool(change["require_sse"])
                if "require_tls" in change:
                    self.require_tls = bool(change["require_tls"])
                if change.get("revoke"):
                    now = utcnow()
                    self.expiry = {k: min(v, now) for k, v in self.expiry.items()}
        with self.lock:
            state = {
                "expired_answers": self.expired_answers,
                "sts_calls": self.sts_calls,
                "s3_writes": self.s3_writes,
                "web_identity_tokens": self.web_identity_tokens,
                "issued_secrets": self.issued_secrets,
                "lifetime": self.lifetime,
                "sts": self.sts,
            }
        data = json.dumps(state).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(data)))])
        return [data]


def error(start_response, status, code, message, service):
    if service == "s3":
        text = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>"
                f"<Message>{message}</Message><RequestId>s3vol-test</RequestId></Error>")
    else:
        text = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>"
                f"<Message>{message}</Message></Error><RequestId>s3vol-test</RequestId>"
                f"</ErrorResponse>")
    data = text.encode()
    start_response(status, [("Content-Type", "application/xml"),
                            ("Content-Length", str(len(data))),
                            ("x-amz-request-id", "s3vol-test")])
    return [data]


def allow_unsigned_web_identity():
    check = TokenResponse._authenticate_and_authorize_normal_action

    def checked(self, resource="*"):
        if self._get_action() == "AssumeRoleWithWebIdentity":
            return  # the token is the credential; AWS takes this call unsigned
        return check(self, resource)

    TokenResponse._authenticate_and_authorize_normal_action = checked


def main():
    allow_unsigned_web_identity()
    port = int(sys.argv[1])
    os.environ.setdefault("MOTO_PORT", str(port))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple("127.0.0.1", port, Sessions(app), threaded=True,
               request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
