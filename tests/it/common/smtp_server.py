"""A real SMTP server for tests/it/notify.rs: aiosmtpd on 127.0.0.1:PORT that requires
STARTTLS before anything else (or, with MODE "tls", speaks TLS from the first byte), then
AUTH (PLAIN or LOGIN) with one user, and writes each message it accepts to OUTDIR/<n>.eml.
Usage: smtp_server.py PORT CERT KEY USER PASSWORD OUTDIR [MODE]. It prints "ready" once
listening and runs until killed."""

import os
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

port, cert, key, user, password, outdir = sys.argv[1:7]
mode = sys.argv[7] if len(sys.argv) > 7 else "starttls"


class Store:
    def __init__(self):
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        path = os.path.join(outdir, f"{self.count}.eml")
        with open(path + ".tmp", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        os.rename(path + ".tmp", path)
        return "250 Message accepted for delivery"


def authenticate(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == user.encode()
        and auth_data.password == password.encode()
    )
    tls = session.ssl is not None or mode == "tls"
    with open(os.path.join(outdir, "auth.log"), "a") as f:
        f.write(f"{mechanism} {'ok' if ok else 'refused'} tls={tls}\n")
    # handled=False: aiosmtpd answers 535 itself on a refusal.
    return AuthResult(success=ok, handled=False)


context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
if mode == "tls":
    # The whole connection is TLS: there is no STARTTLS to require.
    controller = Controller(
        Store(),
        hostname="127.0.0.1",
        port=int(port),
        ssl_context=context,
        auth_required=True,
        auth_require_tls=False,
        authenticator=authenticate,
    )
else:
    controller = Controller(
        Store(),
        hostname="127.0.0.1",
        port=int(port),
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        authenticator=authenticate,
    )
controller.start()
print("ready", flush=True)
while True:
    time.sleep(3600)
