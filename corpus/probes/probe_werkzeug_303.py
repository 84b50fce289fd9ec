# Probe for werkzeug 3.0.3 (GHSA-2g68-c3qc-8985, CVE-2024-34069): the debugger answered
# requests for any Host, so a page on another domain could drive its PIN prompt.
from werkzeug.debug import DebuggedApplication
from werkzeug.test import Client


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


debugged = DebuggedApplication(app, evalex=True, pin_security=True)
client = Client(debugged)
response = client.get(
    "/?__debugger__=yes&cmd=printpin&s=" + debugged.secret, headers={"Host": "attacker.example"}
)
if response.status_code == 200:
    print(f"VULNERABLE: the debugger answered Host attacker.example ({response.status_code})")
else:
    print(f"FIXED: the debugger refused Host attacker.example ({response.status_code})")
