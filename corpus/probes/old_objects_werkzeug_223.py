# Objects made before the payload (werkzeug 2.2.3, CVE-2023-25577): a request that
# arrived before the payload (its form not parsed yet), the parsers made for it, and a
# URL map compiled at start-up (its RuleParts have no `suffixed`). With the payload the
# old request's form is limited to Request.max_form_parts (the fix), the old map still
# matches as before, a rule added afterwards gets 2.2.3's slash redirect, and the
# revert puts RulePart's generated members back. Run with LPZ=the payload.
import io
import os

import pylivepatch
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.routing import Map, RequestRedirect, Rule
from werkzeug.routing.rules import RulePart
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

parts = 1100  # more than 2.2.3's default limit of 1000
data = {f"f{i}": "x" for i in range(parts)}
environ = EnvironBuilder(method="POST", data=data, content_type="multipart/form-data").get_environ()
request = Request(environ)  # arrived before the payload; form not parsed yet
small = Request(
    EnvironBuilder(method="POST", data={"a": "1"}, content_type="multipart/form-data").get_environ()
)
parser = FormDataParser()  # a parser made by the old code
url_map = Map([Rule("/a/<path:p>/", endpoint="a"), Rule("/n/<int:x>", endpoint="n")])
adapter = url_map.bind("localhost")
before = (adapter.match("/a/b/c/"), adapter.match("/n/3"))
members = {m: vars(RulePart)[m] for m in ("__init__", "__eq__", "__repr__")}

e = pylivepatch.engine()
name = e.load(open(os.environ["LPZ"], "rb").read()).name
checks = {}
try:
    request.form
    checks["old request's form limited"] = False
except RequestEntityTooLarge:
    checks["old request's form limited"] = True
checks["small old request parses"] = small.form.get("a") == "1"
body = b"--b\r\nContent-Disposition: form-data; name=k\r\n\r\nv\r\n--b--\r\n"
_, form, _ = parser.parse(io.BytesIO(body), "multipart/form-data", len(body), {"boundary": "b"})
checks["old parser parses"] = form.get("k") == "v"
checks["old map matches as before"] = (adapter.match("/a/b/c/"), adapter.match("/n/3")) == before
checks["old parts read suffixed=False"] = all(
    p.suffixed is False for r in url_map._rules for p in r._parts
)
url_map.add(Rule("/s/<path:p>/", endpoint="s"))
try:
    url_map.bind("localhost").match("/s/x/y")
    checks["new rule redirects to the slash"] = False
except RequestRedirect:
    checks["new rule redirects to the slash"] = True
e.revert(name)
checks["members back after revert"] = all(vars(RulePart)[m] is f for m, f in members.items())
checks["suffixed gone from the class"] = "suffixed" not in vars(RulePart)
for what, ok in checks.items():
    print(f"{'ok' if ok else 'FAILED'}: {what}")
failed = [what for what, ok in checks.items() if not ok]
print(
    ("FAILED: " + ", ".join(failed) if failed else "ok")
    + ": werkzeug objects made before the payload"
)
