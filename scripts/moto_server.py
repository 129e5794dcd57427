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

moto answers GetBucketVersioning with a <GetBucketVersioningResponse> document
where S3 sends <VersioningConfiguration>, which the Rust SDK refuses; this layer
renames the root.

moto with authentication on cannot take a request signed in its query string (a
presigned URL): it reads only the Authorization header. For a URL signed with
credentials STS handed out, this layer does what S3 does (other URLs go to moto
as they are): it checks the
signature with the session's secret key, refuses the URL once X-Amz-Expires has
passed (403 AccessDenied, "Request has expired") or the session has ended, and
passes the request on signed in headers with the same credentials, so moto still
checks the role's permissions.

Everything else goes to moto unchanged, except that AssumeRoleWithWebIdentity is
let through without a signature (as AWS does; moto with authentication on fails
it). Run it with the Python of the moto virtualenv.
"""

import datetime
import hashlib
import hmac
import io
import json
import os
import re
import sys
import threading
import urllib.parse

from werkzeug.serving import run_simple

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
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
        self.credentials = {}  # access key id -> (secret key, session token)
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
        if "X-Amz-Signature=" in environ.get("QUERY_STRING", ""):
            return self.presigned(environ, start_response)
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
        if method == "GET" and "versioning" in urllib.parse.parse_qs(
                environ.get("QUERY_STRING", ""), keep_blank_values=True):
            return self.versioning(environ, start_response)
        return self.app(environ, start_response)

    def versioning(self, environ, start_response):
        """GetBucketVersioning, its document named as S3 names it."""
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        text = b"".join(self.app(environ, capture)).decode()
        text = text.replace("GetBucketVersioningResponse", "VersioningConfiguration")
        data = text.encode()
        headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(data))))
        start_response(captured["status"], headers)
        return [data]

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
        secret = re.search(r"<SecretAccessKey>([^<]+)</SecretAccessKey>", text)
        token = re.search(r"<SessionToken>([^<]+)</SessionToken>", text)
        if key and secret:
            with self.lock:
                self.credentials[key.group(1)] = (secret.group(1), token and token.group(1))
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

    def presigned(self, environ, start_response):
        """A request signed in its query string, as S3 checks one."""
        pairs = urllib.parse.parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        query = dict(pairs)
        try:
            key, day, region, service, _ = query["X-Amz-Credential"].split("/")
            signed_at = datetime.datetime.strptime(
                query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
            lifetime = datetime.timedelta(seconds=int(query["X-Amz-Expires"]))
            signed_headers = query["X-Amz-SignedHeaders"].split(";")
        except (KeyError, ValueError):
            return error(start_response, "400 Bad Request", "AuthorizationQueryParametersError",
                         "malformed presigned URL", "s3")
        with self.lock:
            credentials = self.credentials.get(key)
            expiry = self.expiry.get(key)
        if credentials is None:
            # Not signed with a session: moto's own (which, with authentication
            # off, takes any request).
            return self.app(environ, start_response)
        if signed_at + lifetime < utcnow():
            return error(start_response, "403 Forbidden", "AccessDenied",
                         "Request has expired", "s3")
        if expiry is not None and expiry <= utcnow():
            return error(start_response, "400 Bad Request", "ExpiredToken",
                         "The provided token has expired.", "s3")
        secret, token = credentials
        raw_path = environ.get("RAW_URI", environ.get("REQUEST_URI", "/")).split("?")[0]
        encode = lambda text: urllib.parse.quote(text, safe="-_.~")
        canonical_query = "&".join(
            f"{encode(k)}={encode(v)}"
            for k, v in sorted(pairs) if k != "X-Amz-Signature")
        header = lambda name: environ.get("HTTP_" + name.upper().replace("-", "_"), "").strip()
        canonical_request = "\n".join([
            environ["REQUEST_METHOD"], raw_path, canonical_query,
            "".join(f"{name}:{header(name)}\n" for name in signed_headers),
            ";".join(signed_headers), "UNSIGNED-PAYLOAD"])
        scope = f"{day}/{region}/{service}/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", query["X-Amz-Date"], scope,
                             hashlib.sha256(canonical_request.encode()).hexdigest()])
        signing_key = ("AWS4" + secret).encode()
        for part in (day, region, service, "aws4_request"):
            signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signature, query["X-Amz-Signature"]):
            return error(start_response, "403 Forbidden", "SignatureDoesNotMatch",
                         "The request signature we calculated does not match", "s3")
        if environ["REQUEST_METHOD"] in ("PUT", "POST", "DELETE"):
            with self.lock:
                self.s3_writes += 1
        # Signed again in headers, with the same session, for moto to authorize.
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        rest = [(k, v) for k, v in pairs if not k.startswith("X-Amz-")]
        environ["QUERY_STRING"] = urllib.parse.urlencode(rest)
        url = f"http://{header('host')}{raw_path}"
        if rest:
            url += "?" + environ["QUERY_STRING"]
        request = AWSRequest(method=environ["REQUEST_METHOD"], url=url, data=body)
        S3SigV4Auth(Credentials(key, secret, token), "s3", region).add_auth(request)
        for name, value in request.headers.items():
            environ["HTTP_" + name.upper().replace("-", "_")] = value
        return self.app(environ, start_response)

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
